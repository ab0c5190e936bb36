"""The README's first command keeps working: a short `erpsync demo` ends with the shop equal to the ERP."""

from click.testing import CliRunner

from erpsync.cli import main


def test_demo_converges_and_exits_0() -> None:
    args = ["--log-level", "warning", "demo", "-n", "300", "--rate", "300", "--skus", "40"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "OK: the shop equals the ERP" in r.output
    assert "p99" in r.output
