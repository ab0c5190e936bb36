"""Mapping rules: small SQL expressions parsed once with sqlglot.

The same rule is (a) compiled into a Python function evaluated on streamed rows, and (b) transpiled into
the snapshot/reconcile SELECT for PostgreSQL, MySQL and DuckDB, so both paths compute the same thing.
SQL NULL semantics hold on the Python side: arithmetic and comparisons with NULL give NULL.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError

DIALECTS = ("postgres", "mysql", "duckdb")


class RuleError(ValueError):
    """A rule that cannot be parsed, compiled or transpiled; the message names its YAML path."""


def identifier_name(ident: exp.Identifier, dialect: str | None) -> str:
    """The name the database stores for an identifier as the config writes it: a quoted one exactly; an
    unquoted one as ``dialect`` folds it (PostgreSQL: to lower case; MySQL: unchanged); no dialect: as
    written."""
    if ident.quoted or dialect is None:
        return ident.name
    return Dialect.get_or_raise(dialect).normalize_identifier(ident.copy()).name


def identifier_path(text: str, dialect: str | None) -> list[str] | None:
    """The parts of ``text`` written as a SQL name (``"OITM"``, ``sales."OITM"``, ``oitm``), each as the
    database stores it (see identifier_name); None when ``text`` is not written in SQL identifier syntax
    (then the caller takes each dot-separated part exactly as written)."""
    try:
        table = sqlglot.parse_one(text, into=exp.Table, read=dialect, error_level=ErrorLevel.RAISE)
    except (SqlglotError, RecursionError):
        return None
    names = ("catalog", "db", "this")
    parts = [table.args.get(k) for k in names if table.args.get(k) is not None]
    other = [k for k, v in table.args.items() if v not in (None, [], False) and k not in names]
    if other or not all(isinstance(p, exp.Identifier) for p in parts):
        return None
    return [identifier_name(p, dialect) for p in parts]


def to_number(v: Any) -> Any:
    """A value as rules compute with it: float → its exact Decimal, bool → int, numeric text → Decimal
    (ValueError otherwise); anything else as it is."""
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, str):
        try:
            return Decimal(v.strip())
        except InvalidOperation:
            raise ValueError(f"not a number: {v[:40]!r}") from None
    return v


def _add(a: Any, b: Any) -> Any:
    return None if a is None or b is None else to_number(a) + to_number(b)


def _sub(a: Any, b: Any) -> Any:
    return None if a is None or b is None else to_number(a) - to_number(b)


def _mul(a: Any, b: Any) -> Any:
    return None if a is None or b is None else to_number(a) * to_number(b)


def _div(a: Any, b: Any) -> Any:
    if a is None or b is None or b == 0:
        return None  # SQL would raise on /0; a rule must not stop the stream: NULL, like MySQL
    return Decimal(to_number(a)) / Decimal(to_number(b))


def _mod(a: Any, b: Any) -> Any:
    return None if a is None or b is None or b == 0 else to_number(a) % to_number(b)


def _neg(a: Any) -> Any:
    return None if a is None else -to_number(a)


def _cmp(op: str) -> Callable[[Any, Any], Any]:
    import operator

    f = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "ge": operator.ge,
         "lt": operator.lt, "le": operator.le}[op]

    def compare(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        if isinstance(a, (int, float, Decimal)) and not isinstance(a, bool) and isinstance(b, str):
            b = to_number(b)
        elif isinstance(b, (int, float, Decimal)) and not isinstance(b, bool) and isinstance(a, str):
            a = to_number(a)
        return f(to_number(a) if isinstance(a, float) else a, to_number(b) if isinstance(b, float) else b)

    return compare


def _and(*xs: Any) -> Any:
    if any(x is False or (x is not None and not x) for x in xs):
        return False
    return None if any(x is None for x in xs) else True


def _or(*xs: Any) -> Any:
    if any(x is not None and bool(x) for x in xs):
        return True
    return None if any(x is None for x in xs) else False


def _not(a: Any) -> Any:
    return None if a is None else not a


def _coalesce(*xs: Any) -> Any:
    return next((x for x in xs if x is not None), None)


def _concat(*xs: Any) -> Any:
    return None if any(x is None for x in xs) else "".join(_text(x) for x in xs)


def _text(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _lower(v: Any) -> Any:
    return None if v is None else _text(v).lower()


def _upper(v: Any) -> Any:
    return None if v is None else _text(v).upper()


def _trim(v: Any) -> Any:
    return None if v is None else _text(v).strip()


def _to_int(v: Any) -> Any:
    if v is None:
        return None
    n = to_number(v)
    return int(n)


def _to_dec(v: Any) -> Any:
    return None if v is None else Decimal(to_number(v))


def _greatest(*xs: Any) -> Any:
    vals = [to_number(x) for x in xs if x is not None]
    return max(vals) if vals else None


def _least(*xs: Any) -> Any:
    vals = [to_number(x) for x in xs if x is not None]
    return min(vals) if vals else None


def _abs(v: Any) -> Any:
    return None if v is None else abs(to_number(v))


def _round(v: Any, places: Any = 0) -> Any:
    if v is None:
        return None
    from decimal import ROUND_HALF_UP

    return Decimal(to_number(v)).quantize(Decimal(1).scaleb(-int(places or 0)), rounding=ROUND_HALF_UP)


def _in(v: Any, *xs: Any) -> Any:
    if v is None:
        return None
    return any(_cmp("eq")(v, x) for x in xs)


HELPERS: dict[str, Any] = {
    "_add": _add, "_sub": _sub, "_mul": _mul, "_div": _div, "_mod": _mod, "_neg": _neg,
    "_eq": _cmp("eq"), "_ne": _cmp("ne"), "_gt": _cmp("gt"), "_ge": _cmp("ge"), "_lt": _cmp("lt"),
    "_le": _cmp("le"), "_and": _and, "_or": _or, "_not": _not, "_coalesce": _coalesce,
    "_concat": _concat, "_lower": _lower, "_upper": _upper, "_trim": _trim, "_to_int": _to_int,
    "_to_dec": _to_dec, "_text": _text, "_greatest": _greatest, "_least": _least, "_abs": _abs,
    "_round": _round, "_in": _in, "Decimal": Decimal,
}

_BINARY = {exp.Add: "_add", exp.Sub: "_sub", exp.Mul: "_mul", exp.Div: "_div", exp.Mod: "_mod",
           exp.EQ: "_eq", exp.NEQ: "_ne", exp.GT: "_gt", exp.GTE: "_ge", exp.LT: "_lt", exp.LTE: "_le",
           exp.DPipe: "_concat", exp.And: "_and", exp.Or: "_or"}
_UNARY_FN = {exp.Lower: "_lower", exp.Upper: "_upper", exp.Abs: "_abs"}
_INT_TYPES = {"INT", "BIGINT", "SMALLINT", "TINYINT", "INTEGER", "UBIGINT", "UINT", "MEDIUMINT"}
_DEC_TYPES = {"DECIMAL", "NUMERIC", "DOUBLE", "FLOAT", "REAL", "BIGDECIMAL"}
_TEXT_TYPES = {"TEXT", "VARCHAR", "CHAR", "NVARCHAR", "NCHAR"}
# every node type a rule may contain, anywhere in its tree (a subquery, a function call, a variable or a
# parameter is refused wherever it is); some allow only some of their arguments (_ARGS)
_ALLOWED: tuple[type[exp.Expression], ...] = (
    exp.Paren, exp.Column, exp.Identifier, exp.Literal, exp.Null, exp.Boolean, exp.Neg, *_BINARY,
    exp.Not, exp.Is, exp.In, exp.Between, exp.Coalesce, exp.Greatest, exp.Least,
    exp.Concat, exp.Trim, exp.Round, *_UNARY_FN, exp.Case, exp.If, exp.Cast, exp.TryCast, exp.DataType,
    exp.DataTypeParam, exp.Anonymous,
)
_ARGS: dict[type[exp.Expression], set[str]] = {
    exp.In: {"this", "expressions"},  # not: query (IN (SELECT ...)), unnest, field
    exp.Trim: {"this"},  # not: TRIM(LEADING 'x' FROM ...), which the stream would not compute
    exp.Cast: {"this", "to"},
    exp.TryCast: {"this", "to"},
}
MAX_DEPTH = 64  # nesting of a rule's tree: far more than any real rule, far less than Python's limits
MAX_DIGITS = 60  # digits of a number literal (DECIMAL(38) holds 38)
MAX_TEXT = 10_000  # characters of a rule


class Rule:
    """One compiled rule. ``columns`` are the names of the columns it reads as the database stores them:
    a quoted name (``"ItemCode"``) exactly, an unquoted one as ``dialect`` folds it (PostgreSQL: lower
    case); without a dialect, as written."""

    def __init__(self, text: str | int, path: str, dialect: str | None = None) -> None:
        self.text = str(text)
        self.path = path
        if len(self.text) > MAX_TEXT:
            raise RuleError(f"{path}: rule is {len(self.text)} characters long (at most {MAX_TEXT})")
        try:
            self.tree = sqlglot.parse_one(self.text, error_level=ErrorLevel.RAISE)
        except (ParseError, SqlglotError) as e:
            raise RuleError(f"{path}: cannot parse rule {_short(self.text)!r}: {_first_line(e)}") from None
        except RecursionError:
            raise RuleError(f"{path}: rule {_short(self.text)!r} is nested too deeply "
                            f"(at most {MAX_DEPTH} levels)") from None
        if self.tree is None or isinstance(self.tree, (exp.Select, exp.Query, exp.Command)):
            raise RuleError(f"{path}: rule {self.text!r} must be an expression, not a statement")
        self._check_tree()
        self._resolve_columns(dialect)
        self.columns: list[str] = []
        # lookup(name, expr) calls: (name, compiled key expression; one function object per distinct
        # expression, shared by all rules); the normalizer resolves them
        self.lookups: list[tuple[str, Callable[[dict[str, Any]], Any]]] = []
        self._in_lookup = False
        code = self._py(self.tree)
        try:
            self.fn: Callable[..., Any] = eval(f"lambda r, _L=_no_lookup: {code}", dict(HELPERS))
        except SyntaxError as e:  # pragma: no cover - codegen bug
            raise RuleError(f"{path}: internal compile error for {self.text!r}: {e}") from None
        for d in DIALECTS:  # refuse at load what a dialect cannot express
            self.sql(d)

    def __repr__(self) -> str:
        return f"Rule({self.text!r} at {self.path})"

    def __call__(self, row: dict[str, Any], lookup: Callable[[str, Any], Any] | None = None) -> Any:
        return self.fn(row, lookup) if lookup is not None else self.fn(row)

    @property
    def lookup_names(self) -> list[str]:
        return list(dict.fromkeys(n for n, _ in self.lookups))

    @property
    def is_column(self) -> bool:
        return isinstance(self.tree, exp.Column)

    def sql(self, dialect: str, qualifier: str | None = None,
            lookup_sql: Callable[[str, exp.Expression], exp.Expression] | None = None) -> str:
        """The rule as SQL for ``dialect``; identifiers quoted (no injection through column names).

        ``lookup_sql(name, key_tree)`` replaces each lookup() call (e.g. by a correlated subquery)."""
        tree = self.sql_tree(qualifier, lookup_sql)
        try:
            return tree.sql(dialect=dialect, identify=True, unsupported_level=ErrorLevel.RAISE)
        except SqlglotError as e:
            raise RuleError(f"{self.path}: rule {self.text!r} cannot be written for {dialect}: "
                            f"{_first_line(e)}") from None

    def sql_tree(self, qualifier: str | None = None,
                 lookup_sql: Callable[[str, exp.Expression], exp.Expression] | None = None) -> exp.Expression:
        tree = self.tree.copy()
        if qualifier:
            for col in list(tree.find_all(exp.Column)):
                parent = col.parent
                if parent is not None and _is_lookup(parent) and parent.expressions[0] is col:
                    continue  # the lookup's name, not a column
                col.set("table", exp.to_identifier(qualifier))
        if lookup_sql is not None:
            def swap(node: exp.Expression) -> exp.Expression:
                if _is_lookup(node):
                    return lookup_sql(_lookup_name(node), node.expressions[1])
                return node

            tree = tree.transform(swap, copy=False)
        return tree

    def _resolve_columns(self, dialect: str | None) -> None:
        """Each column of the tree quoted, holding its name as the database stores it: the stream's row
        keys and the SELECTs' quoted identifiers are then the same names."""
        if dialect is None:
            return
        for col in list(self.tree.find_all(exp.Column)):
            parent = col.parent
            if parent is not None and _is_lookup(parent) and parent.expressions[0] is col:
                continue  # the lookup's name, not a column
            if isinstance(col.this, exp.Identifier):
                col.set("this", exp.to_identifier(identifier_name(col.this, dialect), quoted=True))

    def _check_tree(self) -> None:
        """Refuse, anywhere in the tree, a node type (or argument) rules do not support, a tree nested
        deeper than MAX_DEPTH and a number literal longer than MAX_DIGITS."""
        stack: list[tuple[exp.Expression, int]] = [(self.tree, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise RuleError(f"{self.path}: rule {_short(self.text)!r} is nested too deeply "
                                f"(at most {MAX_DEPTH} levels)")
            if not isinstance(node, _ALLOWED) or (isinstance(node, exp.Anonymous) and not _is_lookup(node)):
                raise RuleError(f"{self.path}: {type(node).__name__} ({_short(node.sql())!r}) is not "
                                f"supported in rules; {_SUPPORTED}")
            allowed = _ARGS.get(type(node))
            extra = [k for k, v in node.args.items() if v not in (None, [], False)
                     and allowed is not None and k not in allowed]
            if extra:
                raise RuleError(f"{self.path}: {type(node).__name__} with {extra[0]} "
                                f"({_short(node.sql())!r}) is not supported in rules; {_SUPPORTED}")
            if isinstance(node, exp.Literal) and not node.is_string:
                digits = sum(ch.isdigit() for ch in node.this)
                if digits > MAX_DIGITS:
                    raise RuleError(f"{self.path}: number literal of {digits} digits in rule "
                                    f"{_short(self.text)!r} (at most {MAX_DIGITS})")
                try:
                    size = abs(Decimal(node.this).adjusted())
                except InvalidOperation:
                    size = 0  # not a decimal number: the compile step names it
                if size > MAX_DIGITS:
                    raise RuleError(f"{self.path}: number literal {_short(node.this)!r} in rule "
                                    f"{_short(self.text)!r} is out of range (at most {MAX_DIGITS} digits)")
            stack.extend((child, depth + 1) for child in node.iter_expressions())

    # codegen --------------------------------------------------------------------------------------
    def _py(self, node: exp.Expression) -> str:
        if isinstance(node, exp.Paren):
            return self._py(node.this)
        if _is_lookup(node):
            return self._py_lookup(node)
        if isinstance(node, exp.Column):
            if node.table:
                raise RuleError(f"{self.path}: {node.sql()!r}: write plain column names (rules read one row)")
            name = node.name
            if name not in self.columns:
                self.columns.append(name)
            return f"r.get({name!r})"
        if isinstance(node, exp.Literal):
            if node.is_string:
                return repr(node.this)
            text = node.this
            return repr(int(text)) if text.lstrip("-").isdigit() else f"Decimal({text!r})"
        if isinstance(node, exp.Null):
            return "None"
        if isinstance(node, exp.Boolean):
            return repr(bool(node.this))
        if isinstance(node, exp.Neg):
            return f"_neg({self._py(node.this)})"
        fn = _BINARY.get(type(node))
        if fn is not None:
            return f"{fn}({self._py(node.left)}, {self._py(node.right)})"
        if isinstance(node, exp.Not):
            return f"_not({self._py(node.this)})"
        if isinstance(node, exp.Is):
            inner = self._py(node.this)
            if not isinstance(node.expression, exp.Null):
                raise RuleError(f"{self.path}: only IS [NOT] NULL is supported in {self.text!r}")
            return f"({inner} is None)"
        if isinstance(node, exp.In):
            items = ", ".join(self._py(e) for e in node.expressions)
            return f"_in({self._py(node.this)}, {items})"
        if isinstance(node, exp.Between):
            v, lo, hi = (self._py(node.this), self._py(node.args["low"]), self._py(node.args["high"]))
            return f"_and(_ge({v}, {lo}), _le({v}, {hi}))"
        code = self._py_function(node)
        if code is not None:
            return code
        raise RuleError(f"{self.path}: {type(node).__name__} ({_short(node.sql())!r}) is not supported in "
                        f"rules; {_SUPPORTED}")

    def _py_lookup(self, node: exp.Expression) -> str:
        if self._in_lookup:
            raise RuleError(f"{self.path}: nested lookup() in {self.text!r} is not supported")
        if len(node.expressions) != 2:
            raise RuleError(f"{self.path}: lookup() takes (name, expression) in {self.text!r}")
        try:
            name = _lookup_name(node)
        except ValueError as e:
            raise RuleError(f"{self.path}: {e} in {self.text!r}") from None
        self._in_lookup = True
        key = self._py(node.expressions[1])
        self._in_lookup = False
        self.lookups.append((name, _row_function(key)))
        return f"_L({name!r}, {key})"

    def _py_function(self, node: exp.Expression) -> str | None:
        """Functions, CASE / IF and CAST; None: not one of those."""
        if isinstance(node, exp.Coalesce):
            args = [node.this, *node.expressions]
            return f"_coalesce({', '.join(self._py(a) for a in args)})"
        if isinstance(node, (exp.Greatest, exp.Least)):
            args = [node.this, *node.expressions]
            fn = "_greatest" if isinstance(node, exp.Greatest) else "_least"
            return f"{fn}({', '.join(self._py(a) for a in args)})"
        if isinstance(node, exp.Concat):
            return f"_concat({', '.join(self._py(a) for a in node.expressions)})"
        if isinstance(node, exp.Trim):
            return f"_trim({self._py(node.this)})"
        if isinstance(node, exp.Round):
            places = node.args.get("decimals")
            return f"_round({self._py(node.this)}, {self._py(places) if places else 0})"
        for cls, fn in _UNARY_FN.items():
            if type(node) is cls:
                return f"{fn}({self._py(node.this)})"
        if isinstance(node, exp.Case):
            default = self._py(node.args["default"]) if node.args.get("default") else "None"
            code = default
            subject = node.this
            for branch in reversed(node.args.get("ifs") or []):
                cond = self._py(branch.this)
                if subject is not None:
                    cond = f"_eq({self._py(subject)}, {cond})"
                code = f"({self._py(branch.args['true'])} if {cond} else {code})"
            return code
        if isinstance(node, exp.If):
            false = self._py(node.args["false"]) if node.args.get("false") else "None"
            return f"({self._py(node.args['true'])} if {self._py(node.this)} else {false})"
        if isinstance(node, (exp.Cast, exp.TryCast)):
            to = node.to.this.name if hasattr(node.to.this, "name") else str(node.to.this)
            inner = self._py(node.this)
            if to in _INT_TYPES:
                return f"_to_int({inner})"
            if to in _DEC_TYPES:
                return f"_to_dec({inner})"
            if to in _TEXT_TYPES:
                return f"_text({inner})"
            raise RuleError(f"{self.path}: CAST to {to} is not supported in {self.text!r}")
        return None


@functools.lru_cache(maxsize=1024)
def _row_function(code: str) -> Callable[[dict[str, Any]], Any]:
    """``lambda r: <code>``, one function object per code: lookup() calls on the same key expression
    share theirs (the normalizer evaluates each distinct key once per row)."""
    fn: Callable[[dict[str, Any]], Any] = eval(f"lambda r: {code}", dict(HELPERS))
    return fn


def _no_lookup(name: str, key: Any) -> Any:
    raise RuntimeError(f"lookup({name}) needs the normalizer's lookup state")


HELPERS["_no_lookup"] = _no_lookup


def _is_lookup(node: exp.Expression) -> bool:
    return isinstance(node, exp.Anonymous) and str(node.this).lower() == "lookup"


def _lookup_name(node: exp.Expression) -> str:
    first = node.expressions[0] if node.expressions else None
    if isinstance(first, exp.Column) and not first.table:
        return first.name
    if isinstance(first, exp.Literal) and first.is_string:
        return str(first.this)
    raise ValueError("lookup() needs a lookup name as its first argument")


_SUPPORTED = ("use columns, literals, + - * /, CASE, COALESCE, comparisons, AND/OR/NOT, IN (a list), "
              "BETWEEN, LOWER/UPPER/TRIM, ||, CAST, GREATEST/LEAST, ABS, ROUND, lookup()")


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
