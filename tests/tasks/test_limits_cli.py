"""`studio limits apply` / `show` against a real Prefect API."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.app import app


def test_limits_apply_then_show(monkeypatch):
    monkeypatch.setenv("REPLICATE_MAX_CONCURRENT", "7")
    runner = CliRunner()
    applied = runner.invoke(app, ["limits", "apply"])
    assert applied.exit_code == 0, applied.output
    assert "provider:replicate" in applied.output
    shown = runner.invoke(app, ["limits", "show"])
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if "provider:replicate" in x)
    assert "7" in line
