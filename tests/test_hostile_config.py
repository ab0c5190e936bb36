"""Hostile config: every broken file is refused before anything starts (exit 2) with the file and the YAML
path of the problem in the message."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from erpsync.cli import main

GOOD = """\
source: {kind: postgres, dsn: "host=127.0.0.1 dbname=erp", slot: erpsync, publication: erpsync}
stock:
  table: public.stock_levels
  sku: sku
  warehouse: warehouse_code
  quantity: on_hand - reserved
  locations: {WH-MAD: madrid}
sinks:
  - {name: shop, kind: webhook, url: "http://127.0.0.1:9/hook"}
"""

CASES = [
    # (id, text, expected fragments of the message)
    ("bad-yaml", GOOD.replace("stock:\n", "stock:\n  - [\n"), ["not valid YAML at line"]),
    ("tab-indent", GOOD.replace("  sku: sku", "\tsku: sku"), ["not valid YAML at line 4"]),
    ("not-a-mapping", "- just\n- a list\n", ["expected a mapping at the top level"]),
    ("empty-file", "", ["expected a mapping at the top level"]),
    ("unknown-top-key", GOOD + "sinkz: []\n", ["sinkz: Extra inputs are not permitted"]),
    ("unknown-nested-key", GOOD.replace("  sku: sku", "  sku: sku\n  skew: 1"), ["stock.skew"]),
    ("wrong-type-int", GOOD + "outbox: {commit_max_rows: lots}\n", ["outbox.commit_max_rows"]),
    ("wrong-type-list", GOOD.replace("sinks:\n  - {", "sinks: {x: {").replace('hook"}', 'hook"}}'),
     ["sinks: Input should be a valid list"]),
    ("negative-safety", GOOD.replace("  locations:", "  safety_stock: -1\n  locations:"),
     ["stock.safety_stock"]),
    ("unknown-source-kind", GOOD.replace("kind: postgres", "kind: oracle"), ["source"]),
    ("unknown-sink-kind", GOOD.replace("kind: webhook", "kind: ebay"), ["sinks[0]"]),
    ("bad-sink-name", GOOD.replace("name: shop", "name: 'my shop/../x'"), ["sinks[0].name"]),
    ("duplicate-sinks", GOOD + '  - {name: shop, kind: webhook, url: "http://x"}\n',
     ["duplicate sink name(s): shop"]),
    ("missing-env-var", GOOD.replace('"host=127.0.0.1 dbname=erp"', '"${ERPSYNC_HOSTILE_UNSET}"'),
     ["source.dsn: environment variable ERPSYNC_HOSTILE_UNSET is not set"]),
    ("missing-secret-file", GOOD.replace('"host=127.0.0.1 dbname=erp"', '"${file:/nonexistent/erp.dsn}"'),
     ["source.dsn: cannot read secret file /nonexistent/erp.dsn"]),
    ("rule-does-not-compile", GOOD.replace("on_hand - reserved", "on_hand -"), ["stock.quantity"]),
    ("rule-unknown-function", GOOD.replace("on_hand - reserved", "frobnicate(on_hand)"), ["stock.quantity"]),
    ("rule-unknown-lookup", GOOD.replace("  sku: sku", "  sku: lookup(nope, item_id)"),
     ["stock.sku", "nope"]),
    ("nothing-mapped", GOOD.split("stock:")[0] + "sinks: []\n", ["nothing is mapped"]),
    ("bad-cron", GOOD + "reconcile: {schedule: 'every day'}\n", ["reconcile.schedule", "not a valid cron"]),
]


@pytest.mark.parametrize("text, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_is_refused_naming_the_place(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = tmp_path / "erpsync.yaml"
    p.write_text(text)
    r = CliRunner().invoke(main, ["--log-format", "text", "config", "validate", "--offline", str(p)])
    assert r.exit_code == 2, r.output
    assert str(p) in r.output  # the file
    for n in needles:  # and the place in it
        assert n in r.output, r.output
    assert "Traceback" not in r.output


def test_unreadable_config_file(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["config", "validate", "--offline", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "cannot read config" in r.output and "missing.yaml" in r.output


RULE_CASES = [
    ("in-subquery", "on_hand IN (SELECT lo_import('/etc/hostname'))", ["stock.quantity", "In with query"]),
    ("deeply-nested", "(" * 3000 + "on_hand" + ")" * 3000, ["stock.quantity", "nested too deeply"]),
    ("long-chain", "on_hand" + " + 1" * 1000, ["stock.quantity", "nested too deeply"]),
    ("huge-literal", "on_hand + " + "9" * 5000, ["stock.quantity", "number literal of 5000 digits"]),
]


@pytest.mark.parametrize("rule, needles", [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_hostile_rule_is_refused_at_load_naming_the_yaml_path(tmp_path: Path, rule: str,
                                                              needles: list[str]) -> None:
    p = tmp_path / "erpsync.yaml"
    p.write_text(GOOD.replace("on_hand - reserved", f'"{rule}"'))
    r = CliRunner().invoke(main, ["--log-format", "text", "config", "validate", "--offline", str(p)])
    assert r.exit_code == 2, r.output
    assert str(p) in r.output and "Traceback" not in r.output
    for n in needles:
        assert n in r.output, r.output[:2000]
