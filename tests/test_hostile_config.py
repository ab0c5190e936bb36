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
  - {name: shop, kind: webhook, secret: hook-key-hostile, url: "http://127.0.0.1:9/hook"}
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


# Issue 15: the absurd refused, naming the place; the dangerous-but-legitimate warned about -----------------
SHOP = 'kind: magento, token: "tok-hostile-9e1c", url: "https://shop.example"'
SOURCE = '{kind: postgres, dsn: "host=127.0.0.1 dbname=erp", slot: erpsync, publication: erpsync}'
REFUSED = [
    ("timeout-inf", GOOD.replace('hook"}', 'hook", timeout_seconds: .inf}'), ["sinks[0].timeout_seconds"]),
    ("timeout-nan", GOOD.replace('hook"}', 'hook", timeout_seconds: .nan}'), ["sinks[0].timeout_seconds"]),
    ("timeout-zero", GOOD.replace('hook"}', 'hook", timeout_seconds: 0}'), ["sinks[0].timeout_seconds"]),
    ("timeout-negative", GOOD.replace('hook"}', 'hook", timeout_seconds: -1}'), ["sinks[0].timeout_seconds"]),
    ("shop-timeout-inf", GOOD + f"  - {{name: m, {SHOP}, timeout_seconds: .inf}}\n",
     ["sinks[1].timeout_seconds"]),
    ("list-timeout-inf", GOOD.replace('hook"}', 'hook", list_timeout_seconds: .inf}'),
     ["sinks[0].list_timeout_seconds"]),
    ("url-port-too-big", GOOD.replace("127.0.0.1:9/", "127.0.0.1:99999/"), ["sinks[0].url", "65535"]),
    ("url-without-scheme", GOOD.replace('"http://127.0.0.1:9/hook"', "shop.example/hook"),
     ["sinks[0].url", "http:// or https://"]),
    ("list-url-without-scheme", GOOD.replace('hook"}', 'hook", list_url: "shop.example/state"}'),
     ["sinks[0].list_url"]),
    ("ops-listen-port-too-big", GOOD + "ops: {listen: '127.0.0.1:99999'}\n", ["ops.listen", "65535"]),
    ("source-port-too-big", GOOD.replace(SOURCE, "{kind: mysql, database: erp, port: 99999}"),
     ["source.port", "65535"]),
    ("webhook-without-secret", GOOD.replace("secret: hook-key-hostile, ", ""),
     ["sinks[0].secret", "unsigned: true"]),
    ("webhook-empty-secret", GOOD.replace("secret: hook-key-hostile", "secret: '${ERPSYNC_HOSTILE_UNSET:-}'"),
     ["sinks[0].secret", "empty"]),
    ("token-over-plain-http", GOOD + f"  - {{name: m, {SHOP.replace('https://', 'http://')}}}\n",
     ["sinks[1]", "insecure_http: true"]),
]


@pytest.mark.parametrize("text, needles", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_absurd_or_unsafe_setting_is_refused_naming_the_place(tmp_path: Path, text: str,
                                                              needles: list[str]) -> None:
    test_bad_config_is_refused_naming_the_place(tmp_path, text, needles)


def validate(tmp_path: Path, text: str) -> tuple[int, str]:
    p = tmp_path / "erpsync.yaml"
    p.write_text(text)
    r = CliRunner().invoke(main, ["--log-format", "text", "config", "validate", "--offline", str(p)])
    assert "Traceback" not in r.output
    return r.exit_code, r.output


SHADOW = "root:$6$hostile-shadow-content-4d2a:19000:0:99999:7:::"


@pytest.mark.parametrize("where", ["stock.locations.WH-MAD", "sinks[0].url", "sinks[0].name"])
def test_file_content_never_lands_in_a_non_secret_field(tmp_path: Path, where: str) -> None:
    secret_file = tmp_path / "shadow"
    secret_file.write_text(SHADOW)
    ref = "${file:" + str(secret_file) + "}"
    text = {"stock.locations.WH-MAD": GOOD.replace("WH-MAD: madrid", f"WH-MAD: '{ref}'"),
            "sinks[0].url": GOOD.replace('"http://127.0.0.1:9/hook"', f'"{ref}"'),
            "sinks[0].name": GOOD.replace("name: shop", f"name: '{ref}'")}[where]
    code, out = validate(tmp_path, text)
    assert code == 2, out
    assert f"{where}: ${{file:...}} is allowed only in a secret field" in out, out
    assert "hostile-shadow-content" not in out and "root:" not in out


def test_file_reference_in_a_secret_field_still_works(tmp_path: Path) -> None:
    (tmp_path / "hook.key").write_text("hook-key-from-file-77\n")
    ref = "${file:" + str(tmp_path / "hook.key") + "}"
    code, out = validate(tmp_path, GOOD.replace("secret: hook-key-hostile", f"secret: '{ref}'"))
    assert code == 0, out
    assert "hook-key-from-file-77" not in out


@pytest.mark.parametrize("kind", ["device", "fifo", "directory", "too-big"])
def test_secret_file_that_is_not_a_small_regular_file_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    import os

    target = {"device": Path("/dev/zero"), "fifo": tmp_path / "fifo", "directory": tmp_path,
              "too-big": tmp_path / "big"}[kind]
    if kind == "fifo":
        os.mkfifo(target)  # reading it would block forever: refused without reading
    if kind == "too-big":
        target.write_text("x" * (64 * 1024 + 1))
    ref = "${file:" + str(target) + "}"
    code, out = validate(tmp_path, GOOD.replace("secret: hook-key-hostile", f"secret: '{ref}'"))
    assert code == 2, out
    assert f"sinks[0].secret: secret file {target} is" in out, out
    assert "xxxx" not in out


WARNED = [
    ("ops-listen-all-interfaces", GOOD + "ops: {listen: '0.0.0.0:9187'}\n",
     "ops.listen: 0.0.0.0 is not loopback"),
    ("verify-tls-off", GOOD.replace('hook"}', 'hook", verify_tls: false}'), "sinks[0].verify_tls: false"),
    ("unsigned-webhook", GOOD.replace("secret: hook-key-hostile", "unsigned: true"),
     "sinks[0].unsigned: true"),
    ("token-over-plain-http-opted-in",
     GOOD + f"  - {{name: m, {SHOP.replace('https://', 'http://')}, insecure_http: true}}\n",
     "sinks[1].insecure_http: true"),
]


@pytest.mark.parametrize("text, needle", [c[1:] for c in WARNED], ids=[c[0] for c in WARNED])
def test_dangerous_but_legitimate_setting_is_accepted_with_a_warning(tmp_path: Path, text: str,
                                                                     needle: str) -> None:
    code, out = validate(tmp_path, text)
    assert code == 0, out
    assert f"warning: {tmp_path / 'erpsync.yaml'}: {needle}" in out, out
    assert "tok-hostile-9e1c" not in out


def test_a_plain_config_has_no_warning(tmp_path: Path) -> None:
    code, out = validate(tmp_path, GOOD + f"  - {{name: m, {SHOP.replace('shop.example', '127.0.0.1:8')}}}\n")
    assert code == 0 and "warning" not in out, out


def test_run_logs_the_warnings_at_start(tmp_path: Path) -> None:
    """`run` on an ERP that refuses connections exits 1 — but the config's warnings were logged first."""
    p = tmp_path / "erpsync.yaml"
    text = GOOD.replace("host=127.0.0.1 dbname=erp", "host=127.0.0.1 port=9 dbname=erp connect_timeout=2")
    p.write_text(text.replace("secret: hook-key-hostile", "unsigned: true") + "ops: {listen: '0.0.0.0:0'}\n"
                 + f"outbox: {{path: '{tmp_path / 'outbox.db'}'}}\n")
    r = CliRunner().invoke(main, ["--log-format", "text", "run", "--config", str(p), "--wait-for-erp", "0"])
    lines = [x for x in r.output.splitlines() if "WARNING" in x]
    assert any("sinks[0].unsigned: true" in x for x in lines), r.output
    assert any("ops.listen: 0.0.0.0 is not loopback" in x for x in lines), r.output
