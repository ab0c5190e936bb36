from decimal import Decimal

import pytest

from cdc.mapping.rules import Rule, RuleError


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
