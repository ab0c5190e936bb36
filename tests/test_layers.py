"""The structure the code must keep, read from its own source with ``ast`` (every import, also inside
functions): layers point down only (erpsync → reconciler → sinks → cdc), no import circles, no private name
imported across modules, the data path never imports an emulator, outbox SQL only in cdc/outbox/, and no
switch on the ERP database's kind outside cdc/sources/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"cdc": 0, "sinks": 1, "reconciler": 2, "erpsync": 3}
# the application's own tools that serve an emulator on purpose (`erpsync emulate`, the demo, test servers)
EMULATOR_USERS = ("erpsync/cli/tools.py", "erpsync/demo/", "erpsync/testing/", "sinks/emulators/",
                  "sinks/registry_emulators.py")


def modules() -> dict[str, Path]:
    out = {}
    for top in LAYERS:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


MODULES = modules()


def resolve(name: str) -> str | None:
    """The project module an import names (``a.b.c`` may be module a.b with attribute c)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for name, names, _ in imports(path):
            targets = [resolve(f"{name}.{n}") for n in names] or [resolve(name)]
            for t in targets:
                if t and t != mod:
                    g[mod].add(t)
    return g


def test_imports_point_down_only() -> None:
    up = []
    for mod, deps in graph().items():
        for dep in deps:
            if LAYERS[dep.split(".")[0]] > LAYERS[mod.split(".")[0]]:
                up.append(f"{mod} -> {dep}")
    assert not up, "imports that run back up:\n" + "\n".join(sorted(up))


def test_no_import_circles() -> None:
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strongconnect(v)
    assert not circles, f"import circles: {circles}"


def test_no_private_name_imported_across_modules() -> None:
    private = []
    for mod, path in MODULES.items():
        for name, names, line in imports(path):
            if resolve(name) and resolve(name) != mod:
                private += [f"{path.relative_to(ROOT)}:{line}: {name}.{n}" for n in names
                            if n.startswith("_") and not n.startswith("__")]
    assert not private, "private names imported:\n" + "\n".join(private)


def test_the_data_path_never_imports_an_emulator() -> None:
    bad = []
    for path in MODULES.values():
        rel = str(path.relative_to(ROOT))
        if rel.startswith(EMULATOR_USERS):
            continue
        for name, _names, line in imports(path):
            if name.startswith("sinks.emulators"):
                bad.append(f"{rel}:{line}: {name}")
    assert not bad, "production code importing emulators:\n" + "\n".join(bad)


# SQL keywords in capitals, as all SQL here is written (``from sinks.base import`` is Python, not SQL)
OUTBOX_SQL = re.compile(r"\b(FROM|INTO|UPDATE|JOIN|TABLE)\s+(facts|deliveries|positions|sink_status|"
                        r"dead_letters|sinks)\b")
ERP_KIND = re.compile(r"""kind\s*(==|!=)\s*["'](postgres|mysql|debezium)["']|"""
                      r"""kind\s+(not\s+)?in\s*[(\[{][^)\]}]*["'](postgres|mysql|debezium)["']""")


def python_files(outside: str) -> list[Path]:
    return [p for top in LAYERS for p in (ROOT / top).rglob("*.py")
            if not str(p.relative_to(ROOT)).startswith(outside)]


def test_outbox_sql_only_in_cdc_outbox() -> None:
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in python_files("cdc/outbox/")
            for i, line in enumerate(p.read_text().splitlines(), 1) if OUTBOX_SQL.search(line)]
    assert not hits, "outbox SQL outside cdc/outbox/:\n" + "\n".join(hits)


def test_erp_kind_switches_only_in_cdc_sources() -> None:
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in python_files("cdc/sources/")
            for i, line in enumerate(p.read_text().splitlines(), 1) if ERP_KIND.search(line)]
    assert not hits, "switches on the ERP database outside cdc/sources/:\n" + "\n".join(hits)


def test_the_checks_see_what_they_look_for() -> None:
    """The rules above would catch a violation (a check that cannot fail proves nothing)."""
    assert OUTBOX_SQL.search('conn.execute("SELECT x FROM deliveries WHERE")')
    assert not OUTBOX_SQL.search("SELECT * FROM erp_facts")
    assert ERP_KIND.search('if cfg.source.kind == "postgres":') and ERP_KIND.search("kind in ('mysql', 'x')")
    assert resolve("cdc.outbox.store.Outbox") == "cdc.outbox.store" and len(MODULES) > 40
    assert any(deps for deps in graph().values())
