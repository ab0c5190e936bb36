import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cdc.mapping.compiled import CompiledMapping
from cdc.mapping.model import MappingSpec, StockMapping
from cdc.mapping.rules import Rule, RuleError
from erpsync.config import load_config_text

ROOT = Path(__file__).resolve().parent.parent
STOCK = StockMapping(table="stock", sku="sku", warehouse="wh", quantity="qty", locations={"W1": "madrid"})


def test_arithmetic_and_null_semantics():
    r = Rule("on_hand - reserved", "stock.quantity")
    assert r({"on_hand": Decimal("5.5"), "reserved": 2}) == Decimal("3.5")
    assert r({"on_hand": None, "reserved": 2}) is None
    assert r.columns == ["on_hand", "reserved"]


def test_case_coalesce_and_comparisons():
    r = Rule("CASE WHEN active AND qty > 0 THEN coalesce(qty, 0) ELSE 0 END", "stock.quantity")
    assert r({"active": True, "qty": 4}) == 4
    assert r({"active": False, "qty": 4}) == 0
    assert r({"active": None, "qty": 4}) == 0  # NULL condition is not true


def test_text_functions_and_cast():
    r = Rule("upper(trim(code)) || '-' || cast(n AS int)", "stock.sku")
    assert r({"code": " ab ", "n": "7"}) == "AB-7"


def test_floats_become_decimals():
    assert Rule("q * 2", "x")({"q": 0.1}) == Decimal("0.2")


def test_transpiles_with_quoted_identifiers():
    r = Rule('"on hand" - reserved', "stock.quantity")
    assert r.sql("postgres") == '"on hand" - "reserved"'
    assert r.sql("mysql") == "`on hand` - `reserved`"
    assert r.sql("duckdb", "s") == '"s"."on hand" - "s"."reserved"'


@pytest.mark.parametrize("text", ["select 1", "frobnicate(x)", "a +", "t.x + 1", "x ~ 'a'"])
def test_bad_rules_name_their_yaml_path(text):
    with pytest.raises(RuleError, match=r"^stock\.quantity: "):
        Rule(text, "stock.quantity")


def test_injection_through_column_name_is_quoted():
    r = Rule('"a""; DROP TABLE x; --"', "stock.sku")
    assert 'DROP TABLE' in r.sql("postgres") and r.sql("postgres").startswith('"a""')


# the compiled mapping ---------------------------------------------------------------------------------
def _example(name: str, **env: str) -> Any:
    text = (ROOT / "config" / name).read_text()
    for k, v in env.items():
        text = text.replace("${" + k + "}", v)
    return load_config_text(text)


def test_compiled_mapping_reads_every_table_in_the_sources_schema():
    odoo = CompiledMapping.of(_example("odoo-postgres.yaml", ERP_DSN="postgresql://x"))
    assert odoo.tables[:3] == ["public.product_product", "public.stock_location", "public.product_pricelist"]
    assert odoo.tables[-2:] == ["public.stock_quant", "public.product_pricelist_item"]  # lookups first
    dolibarr = CompiledMapping.of(_example("dolibarr-mariadb.yaml", ERP_PASSWORD="pw-rules-only-9f2c"))
    assert dolibarr.stock is not None and dolibarr.stock.table == "dolibarr.llx_product_stock"
    assert CompiledMapping.of(MappingSpec(stock=STOCK)).tables == ["public.stock"]  # no source: public


def test_lookups_on_one_key_expression_share_their_dep():
    stock = CompiledMapping.of(_example("odoo-postgres.yaml", ERP_DSN="postgresql://x")).stock
    assert stock is not None and len(stock.lookup_calls) == 4  # sku, warehouse, filter, per-SKU safety
    assert [src for src, _ in stock.dep_keys] == ["public.product_product:id", "public.stock_location:id"]


@pytest.mark.parametrize(("change", "path"), [
    ({"sku": "lookup(nope, item)"}, "stock.sku: lookup 'nope' is not declared"),
    ({"safety_stock": {"paris": 1}}, "stock.safety_stock: 'paris'"),
    ({"quantity": "qty +"}, "stock.quantity: cannot parse"),
])
def test_compiling_refuses_naming_the_yaml_path(change, path):
    with pytest.raises(RuleError, match=re.escape(path)):
        CompiledMapping(MappingSpec(stock=STOCK.model_copy(update=change)))


@pytest.mark.parametrize("text, needle", [
    ("x IN (SELECT lo_import('/etc/hostname'))", "In with query"),
    ("qty IN (SELECT 1 FROM pg_sleep(1))", "In with query"),
    ("coalesce(qty, (SELECT 1))", "Subquery"),
    ("CASE WHEN qty > 0 THEN (SELECT pg_sleep(5)) ELSE 0 END", "Subquery"),
    ("qty + @@version", "Parameter"),
    ("TRIM(LEADING 'x' FROM sku)", "Trim with position"),
    ("lookup(p, x) + pg_sleep(1)", "PG_SLEEP"),
])
def test_every_node_of_the_tree_is_whitelisted(text: str, needle: str) -> None:
    """Not only the top of the tree: a subquery, variable or unknown function anywhere is refused at load,
    naming the YAML path (before, IN (SELECT ...) was accepted: run by reconcile on the ERP, always false
    on the stream)."""
    with pytest.raises(RuleError, match=r"^stock\.quantity: ") as e:
        Rule(text, "stock.quantity")
    assert needle in str(e.value)


@pytest.mark.parametrize("text, needle", [
    ("(" * 3000 + "qty" + ")" * 3000, "nested too deeply"),
    ("qty" + " + 1" * 1000, "nested too deeply"),
    ("qty + " + "x" * 20_000, "20006 characters long"),
    ("qty + " + "9" * 5000, "number literal of 5000 digits"),
    ("qty * 0." + "1" * 5000, "number literal of 5001 digits"),
    ("qty * 1e999999", "number literal '1e999999' in rule 'qty * 1e999999' is out of range"),
])
def test_nested_rule_and_huge_literal_are_clear_errors(text: str, needle: str) -> None:
    with pytest.raises(RuleError, match=r"^stock\.quantity: ") as e:
        Rule(text, "stock.quantity")
    assert needle in str(e.value) and len(str(e.value)) < 400
