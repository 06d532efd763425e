"""`studio avatar add/update/show/import` with profiles (issue 18), through typer's
CliRunner on the real app and a real database (SQLite and PostgreSQL), and once as the
installed `studio` console script.

Bad input: exit 2, ONE line naming the avatar and the field, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.app import app
from studio.db.engine import session_scope
from studio.db.models import Avatar

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "avatars.yaml"
LORA = "https://w.example/nova.safetensors"
PROFILE_ARGS = [
    "--trigger-word", "ohwx", "--trigger-word", "nova woman", "--lora-strength", "0.8",
    "--tier-mix", "capa1=0.7,capa2=0.2,capa3=0.1", "--platform", "instagram",
    "--platform", "TikTok", "--pieces-per-run", "40", "--daily-budget", "12.5",
    "--workflow", "flows/nova.json", "--checkpoint", "sd_xl_base_1.0.safetensors",
    "--format", "9x16",
]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def one_line_error(result, *words: str) -> str:  # type: ignore[no-untyped-def]
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def shown(name: str) -> dict:
    result = invoke("avatar", "show", name, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def count() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Avatar))


def test_add_takes_the_whole_profile_and_show_prints_it(any_database) -> None:
    added = invoke("avatar", "add", "nova", "--niche", "fitness", "--lora", LORA, *PROFILE_ARGS)
    assert added.exit_code == 0, added.output
    document = shown("nova")
    assert document["trigger_words"] == ["ohwx", "nova woman"]
    assert document["lora_strength"] == 0.8
    assert document["tier_mix"] == {"capa1": 0.7, "capa2": 0.2, "capa3": 0.1}
    assert document["platforms"] == ["instagram", "tiktok"]
    assert document["pieces_per_run"] == 40 and document["daily_budget_usd"] == 12.5
    assert document["workflow"] == "flows/nova.json"
    assert document["checkpoint"] == "sd_xl_base_1.0.safetensors"
    assert document["format"] == "9:16"
    assert (document["name"], document["niche"], document["active"]) == ("nova", "fitness", True)
    table = " ".join(invoke("avatar", "show", "nova").output.split())
    for words in ("trigger_words", "ohwx, nova woman", "capa1 0.7, capa2 0.2, capa3 0.1",
                  "instagram, tiktok", "$12.50", "9:16", "lora_strength"):
        assert words in table, table


def test_an_avatar_without_a_profile_shows_the_studio_defaults(studio_env) -> None:
    assert invoke("avatar", "add", "plain", "--niche", "food").exit_code == 0
    document = shown("plain")
    assert document["trigger_words"] == [] and document["lora_strength"] == 1.0
    assert document["tier_mix"] is None and document["format"] is None
    assert "(studio default)" in invoke("avatar", "show", "plain").output


def test_update_changes_profile_fields_and_clear_resets_them(any_database) -> None:
    invoke("avatar", "add", "nova", "--niche", "fitness", "--lora", LORA, *PROFILE_ARGS)
    updated = invoke("avatar", "update", "nova", "--platform", "tiktok", "--tier-mix",
                     "0.5,0.5,0", "--clear", "format", "--clear", "daily-budget")
    assert updated.exit_code == 0, updated.output
    assert "platforms" in updated.output and "format" in updated.output
    document = shown("nova")
    assert document["platforms"] == ["tiktok"]
    assert document["tier_mix"] == {"capa1": 0.5, "capa2": 0.5, "capa3": 0.0}
    assert document["format"] is None and document["daily_budget_usd"] is None
    assert document["trigger_words"] == ["ohwx", "nova woman"]  # not given: kept
    same = invoke("avatar", "update", "nova", "--lora-strength", "0.8")
    assert same.exit_code == 0 and "nothing (same values)" in same.output


@pytest.mark.parametrize(
    "args, field",
    [
        (["--lora-strength", "strong"], "lora_strength"),
        (["--lora-strength", "2.5"], "lora_strength"),
        (["--tier-mix", "0.5,0.3,0.1"], "tier_mix"),
        (["--tier-mix", "capa1=0.5,gold=0.5,capa3=0"], "tier_mix"),
        (["--platform", "myspace"], "platforms"),
        (["--pieces-per-run", "0"], "pieces_per_run"),
        (["--pieces-per-run", "ten"], "pieces_per_run"),
        (["--daily-budget", "-3"], "daily_budget_usd"),
        (["--format", "9:0"], "format"),
        (["--trigger-word", "a\nb"], "trigger_words"),
        (["--trigger-word", "x", "--trigger-word", "x"], "trigger_words"),
        (["--checkpoint", " sd.safetensors"], "checkpoint"),
        (["--workflow", ""], "workflow"),
        (["--clear", "lora"], "clear"),
        (["--format", "4:5", "--clear", "format"], "format"),
    ],
)
def test_bad_profile_values_exit_2_naming_avatar_and_field(studio_env, args, field) -> None:
    invoke("avatar", "add", "nova", "--niche", "fitness", "--lora", LORA)
    line = one_line_error(invoke("avatar", "update", "nova", "--niche", "food", *args), field)
    assert line.startswith(f"error {field}: avatar 'nova': "), line
    assert shown("nova")["niche"] == "fitness"  # nothing written
    if "--clear" not in args:  # `add` has nothing to clear
        added = invoke("avatar", "add", "vega", "--niche", "food", *args)
        assert one_line_error(added, field).startswith(f"error {field}: avatar 'vega': ")
    assert count() == 1


def test_a_ui_export_workflow_is_refused_at_update(studio_env, tmp_path) -> None:
    ui_export = tmp_path / "ui.json"
    ui_export.write_text(json.dumps({"nodes": [], "links": []}))
    invoke("avatar", "add", "nova", "--niche", "fitness")
    line = one_line_error(invoke("avatar", "update", "nova", "--workflow", str(ui_export)),
                          "workflow", "avatar 'nova'", "API")
    assert line.startswith("error workflow: ")
    assert shown("nova")["workflow"] is None


def test_show_of_an_unknown_avatar_exits_2(studio_env) -> None:
    one_line_error(invoke("avatar", "show", "ghost"), "avatar", "ghost")
    one_line_error(invoke("avatar", "show", "ghost", "--json"), "avatar", "ghost")


def test_show_never_prints_a_signed_lora_links_query(studio_env) -> None:
    signed = "https://bucket.example/nova.safetensors?X-Amz-Signature=s3cr3t"
    assert invoke("avatar", "add", "nova", "--niche", "fitness", "--lora", signed).exit_code == 0
    assert "s3cr3t" not in invoke("avatar", "show", "nova").output
    assert shown("nova")["lora_weights_url"] == "https://bucket.example/nova.safetensors?…"


def test_import_the_example_with_a_dry_run_first(any_database) -> None:
    dry = invoke("avatar", "import", str(EXAMPLE), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "create mara-moves" in dry.output and "nothing written" in dry.output
    assert count() == 0
    done = invoke("avatar", "import", str(EXAMPLE))
    assert done.exit_code == 0, done.output
    assert "3 created, 0 updated, 0 unchanged" in done.output
    words = {shown(name)["trigger_words"][0] for name in ("mara-moves", "theo-tastes",
                                                           "lena-roams")}
    assert len(words) == 3
    invoke("avatar", "update", "theo-tastes", "--lora-strength", "0.5")
    again = invoke("avatar", "import", str(EXAMPLE), "--dry-run")
    assert "update theo-tastes: lora_strength 0.5 -> 0.8" in again.output, again.output
    assert "0 to create, 1 to update, 2 unchanged" in again.output


def test_import_with_one_bad_entry_writes_nothing(studio_env, tmp_path) -> None:
    path = tmp_path / "avatars.yaml"
    good = EXAMPLE.read_text(encoding="utf-8")
    path.write_text(good + "  - name: bad\n    niche: food\n    lora_strength: 7\n",
                    encoding="utf-8")
    line = one_line_error(invoke("avatar", "import", str(path)), "lora_strength",
                          "avatar 'bad' (entry 4)")
    assert "outside 0..2" in line
    assert count() == 0
    one_line_error(invoke("avatar", "import", str(tmp_path / "nope.yaml")), "file", "no such")


def test_the_console_script_imports_and_shows(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LOG_FILE")}
    env["STUDIO_HOME"] = str(tmp_path / "home")
    studio = str(Path(sys.executable).parent / "studio")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([studio, *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)

    assert run("init").returncode == 0
    imported = run("avatar", "import", str(EXAMPLE))
    assert imported.returncode == 0, imported.stderr
    document = json.loads(run("avatar", "show", "lena-roams", "--json").stdout)
    assert document["trigger_words"] == ["lnrm woman"] and document["format"] == "4:5"
    refused = run("avatar", "update", "lena-roams", "--format", "tall")
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("error format: avatar 'lena-roams': ")
    assert len(refused.stderr.strip().splitlines()) == 1
