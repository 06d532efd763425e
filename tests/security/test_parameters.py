"""Issue 15, finding 5 and parts of 6: parameters that cannot be abused, spend that cannot
run away.

Real parts throughout: the session's temporary Prefect server (a real deployment that
enforces its parameter schema, answering 409 at create_flow_run), the real flow, the CLI
through typer, SQLite and a real PostgreSQL, and a billed provider on the ledger's seam.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.settings import get_current_settings
from sqlalchemy import func, select
from typer.testing import CliRunner

from studio.db.engine import session_scope
from studio.db.models import Avatar, Batch, ContentPiece, CostLedgerEntry
from tests.ledger.conftest import SeamProvider

runner = CliRunner()
#: where a traversal from the staging directory would land (checked to be outside the home)
TRAVERSAL = "../../../escaped-by-batch-id"
FORGED = "2026-01-01 00:00:00,000 INFO studio.batch [BATCH COMPLETE] Avatar: forged"


@pytest.fixture(autouse=True)
def _prefect(prefect_api) -> None:
    return None


@pytest.fixture
def demo(studio_env) -> str:
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    return "demo"


@pytest.fixture
def seam_chain(monkeypatch):
    """The image step's chain: one billed provider ($0.03 an image) on the ledger's seam,
    so "nothing billed" is counted at the provider and in the ledger."""
    import tasks.generate_images as generate_images
    from studio.ledger.jobs import ImageCallLedger
    from studio.providers.chain import ProviderChain

    provider = SeamProvider()
    monkeypatch.setattr(
        generate_images, "_chain", ProviderChain([provider], ledger=ImageCallLedger())
    )
    return provider


def invoke(*args: str):
    return runner.invoke(__import__("cli.app", fromlist=["app"]).app, list(args))


def count(model: type) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix in (".png", ".json")]


def one_line_output(result: Any) -> str:
    return result.output.replace("\n", "")


# --- batch ids: UUIDs in the deployment's schema (409) -------------------------------


@pytest.fixture(scope="module")
async def deployment_id(prefect_api) -> str:
    from flows.content_batch import content_batch

    deployment = await content_batch.ato_deployment(
        name="security-params", parameters={"avatar_id": "demo", "num_pieces": 3}
    )
    assert deployment.enforce_parameter_schema
    return str(await deployment.aapply())


def _create_run(deployment_id: str, parameters: dict[str, Any]) -> httpx.Response:
    url = f"{get_current_settings().api.url}/deployments/{deployment_id}/create_flow_run"
    return httpx.post(url, json={"parameters": parameters}, timeout=30)


REFUSED_AT_CREATE = [
    ({"batch_id": "../../../../tmp/x"}, "batch_id"),
    ({"batch_id": "nightly-batch"}, "batch_id"),
    ({"batch_id": str(uuid.uuid4()).upper()}, "batch_id"),
    ({"resume_batch_id": "../../etc/passwd"}, "resume_batch_id"),
    ({"custom_prompts": ["a quiet\x00harbour"]}, "custom_prompts"),
    ({"custom_prompts": ["line one\nline two"]}, "custom_prompts"),
    ({"avatar_id": "demo\n[BATCH COMPLETE] Avatar: x"}, "avatar_id"),
    ({"avatar_id": "x" * 101}, "avatar_id"),
]


@pytest.mark.parametrize(
    "parameters, field",
    REFUSED_AT_CREATE,
    ids=[f"{field}-{i}" for i, (_, field) in enumerate(REFUSED_AT_CREATE)],
)
async def test_the_deployment_refuses_bad_ids_and_control_characters_with_409(
    deployment_id: str, parameters: dict[str, Any], field: str
) -> None:
    response = _create_run(deployment_id, {"avatar_id": "demo", **parameters})
    assert response.status_code == 409, response.text
    assert field in response.text


async def test_the_deployment_takes_a_uuid_batch_id(deployment_id: str) -> None:
    batch_id = str(uuid.uuid4())
    response = _create_run(deployment_id, {"avatar_id": "demo", "batch_id": batch_id})
    assert response.status_code in (200, 201), response.text  # 200: Prefect's created-at race
    assert response.json()["parameters"]["batch_id"] == batch_id


# --- batch ids: refused by the flow itself (a direct call, an unenforced run) ---------


@pytest.mark.parametrize("field", ["batch_id", "resume_batch_id"])
async def test_a_traversal_batch_id_is_refused_and_writes_nothing(demo, studio_env, field) -> None:
    from flows.content_batch import content_batch
    from studio.providers.build import PREVIEW

    home = Path(studio_env.studio_home)
    target = (Path(studio_env.work_dir) / TRAVERSAL).resolve()
    assert not target.is_relative_to(home.resolve())  # the probe would land outside
    rendered = PREVIEW.rendered
    state = await content_batch(
        avatar_id=demo, num_pieces=2, return_state=True, **{field: TRAVERSAL}
    )
    assert state.is_failed() and state.name == "Refused"
    assert state.message.startswith(f"{field}: ") and "UUID" in state.message
    assert not target.exists()
    assert PREVIEW.rendered == rendered
    assert count(Batch) == count(ContentPiece) == count(CostLedgerEntry) == 0
    assert files_under(home) == []


def test_cli_resume_of_a_traversal_id_exits_2_and_writes_nothing(demo, studio_env) -> None:
    result = invoke("batch", "resume", TRAVERSAL)
    assert result.exit_code == 2, result.output
    assert "batch_id:" in one_line_output(result) and "UUID" in result.output
    assert "Traceback" not in result.output
    assert count(Batch) == count(ContentPiece) == 0
    assert not (Path(studio_env.work_dir) / TRAVERSAL).resolve().exists()


# --- another avatar's batch ------------------------------------------------------------


def _rows(batch_id: str) -> list[tuple[Any, ...]]:
    with session_scope() as session:
        pieces = session.scalars(
            select(ContentPiece).where(ContentPiece.batch_id == batch_id).order_by(ContentPiece.id)
        )
        return [
            (p.id, p.avatar_id, p.status, p.access_tier, p.url, p.storage_key) for p in pieces
        ]


async def test_another_avatars_batch_id_is_refused_before_any_spend(demo, seam_chain) -> None:
    from flows.content_batch import content_batch
    from studio.avatars import add_avatar

    with session_scope() as session:
        add_avatar(session, "rival", "travel", "https://w.example/rival.safetensors")
    first = await content_batch(
        avatar_id=demo, num_pieces=4, tier_distribution={"capa1": 0.5, "capa2": 0.25,
                                                         "capa3": 0.25},
        batch_id=str(uuid.uuid4()),
    )
    before = _rows(first.batch_id)
    assert {row[3] for row in before} >= {"capa2", "capa3"}  # premium pieces at stake
    with session_scope() as session:
        batch_before = session.get(Batch, first.batch_id)
        batch_before = (batch_before.avatar_id, batch_before.status, batch_before.published)
    jobs, ledger_rows = len(seam_chain.created_jobs), count(CostLedgerEntry)

    state = await content_batch(
        avatar_id="rival", num_pieces=4, batch_id=first.batch_id, return_state=True
    )
    assert state.is_failed() and state.name == "Refused"
    assert state.message.startswith("batch_id: ")
    assert "belongs to another avatar" in state.message
    assert _rows(first.batch_id) == before  # not moved, not republished
    with session_scope() as session:
        batch = session.get(Batch, first.batch_id)
        assert (batch.avatar_id, batch.status, batch.published) == batch_before
    assert len(seam_chain.created_jobs) == jobs and count(CostLedgerEntry) == ledger_rows


def test_another_avatars_crashed_run_does_not_end_a_running_batch(demo) -> None:
    """A run of avatar B naming A's running batch that crashes or is cancelled before its
    validation refuses it: its state hook must not write its ending onto A's batch (crash
    recovery would then resume A's batch on B's say-so)."""
    from types import SimpleNamespace

    from flows.batch_state_hooks import write_ending
    from studio.avatars import add_avatar
    from tasks.save import register_batch

    batch_id = str(uuid.uuid4())
    with session_scope() as session:
        add_avatar(session, "rival", "travel", "https://w.example/rival.safetensors")
        owner = session.scalar(select(Avatar).where(Avatar.name == demo))
        owner_id = owner.id
    register_batch(batch_id, owner_id, {}, 4)

    def crashed_run(avatar: str) -> SimpleNamespace:
        return SimpleNamespace(id=uuid.uuid4(), parameters={"avatar_id": avatar,
                                                            "batch_id": batch_id})

    crashed = SimpleNamespace(name="Crashed", message="process killed", type="CRASHED",
                              is_crashed=lambda: True, is_cancelled=lambda: False)
    write_ending(None, crashed_run("rival"), crashed)
    with session_scope() as session:
        assert session.get(Batch, batch_id).status == "running"
    write_ending(None, crashed_run(demo), crashed)  # its own avatar's run, by name
    with session_scope() as session:
        assert session.get(Batch, batch_id).status != "running"


# --- control characters in free text ---------------------------------------------------


async def test_a_nul_in_a_prompt_is_refused_naming_the_field(any_database) -> None:
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    state = await content_batch(
        avatar_id="demo", num_pieces=2, custom_prompts=["a calm lake", "a quiet\x00harbour"],
        return_state=True,
    )
    assert state.is_failed() and state.name == "Refused"
    assert state.message == (
        "custom_prompts: prompt 2 contains the control character \\x00; use printable text only"
    )
    assert "DataError" not in state.message and "INSERT" not in state.message
    assert count(Batch) == count(ContentPiece) == 0


def test_a_nul_in_an_avatar_lookup_is_no_database_error(any_database) -> None:
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    for args in (["stats", "--avatar", "demo\x00"], ["batch", "run", "--avatar", "demo\x00"]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert "avatar" in result.output and "DataError" not in result.output


@pytest.mark.parametrize(
    "args, field",
    [
        (["--prompt", "a quiet\x00harbour"], "custom_prompts"),
        (["--prompt", "first line\nINFO [BATCH COMPLETE]"], "custom_prompts"),
        (["--prompt", "a calm lake", "--tier", "capa1\x00"], "custom_tiers"),
        (["--prompt", "bell\x07"], "custom_prompts"),
    ],
)
def test_cli_refuses_control_characters_with_exit_2(demo, args, field) -> None:
    result = invoke("batch", "run", "--avatar", demo, "--pieces", "1", *args)
    assert result.exit_code == 2, result.output
    assert f"{field}:" in one_line_output(result) and "control character" in result.output
    assert count(Batch) == count(ContentPiece) == 0


@pytest.mark.parametrize(
    "args, field",
    [
        (["nova\n[BATCH COMPLETE] Avatar: x", "--niche", "fitness"], "name"),
        (["nova\x00", "--niche", "fitness"], "name"),
        (["nova\u202etxt", "--niche", "fitness"], "name"),  # a bidi override: invisible
        (["n" * 101, "--niche", "fitness"], "name"),
        ([" nova", "--niche", "fitness"], "name"),
        (["nova", "--niche", "fit\rness"], "niche"),
        (["nova", "--niche", "f" * 51], "niche"),
        ([str(uuid.uuid4()), "--niche", "fitness"], "name"),  # commands take "id or name"
    ],
)
def test_avatar_add_refuses_unprintable_or_long_names(studio_env, args, field) -> None:
    result = invoke("avatar", "add", *args, "--lora", "https://w.example/nova.safetensors")
    assert result.exit_code == 2, result.output
    assert f"{field}:" in one_line_output(result)
    assert count(Avatar) == 0


def test_avatar_add_takes_a_printable_name(studio_env) -> None:
    result = invoke(
        "avatar", "add", "Nova Ríos 🌊", "--niche", "fitness", "--lora", "https://w.example/n"
    )
    assert result.exit_code == 0, result.output
    assert count(Avatar) == 1


async def test_a_stored_newline_name_cannot_forge_a_log_line(studio_env, monkeypatch) -> None:
    """A row written before names were checked: the batch runs, and app.log keeps one
    line per record (the name's newline is escaped, not written)."""
    from flows.content_batch import content_batch
    from studio.batchlog import configure_logging

    # its niche ('fitness\nx') has no templates: it may borrow (issue 18), so it runs
    monkeypatch.setattr(studio_env, "templates_allow_other_niches", True)

    name, avatar_id = f"old\n{FORGED}", str(uuid.uuid4())
    with session_scope() as session:  # as an older version stored it, unchecked
        session.add(Avatar(id=avatar_id, name=name, niche="fitness\nx",
                           lora_weights_url="https://w.example/old.safetensors"))
    result = await content_batch(avatar_id=avatar_id, num_pieces=2, upload_to_storage=False)
    assert result.published + result.pending_review + result.rejected == 2
    configure_logging(studio_env.log_file, "INFO")
    logging.getLogger("studio.batch").warning("Avatar name: %s", name)  # any interpolation
    lines = Path(studio_env.log_file).read_text(encoding="utf-8").splitlines()
    assert not [line for line in lines if line.startswith(FORGED[:10]) and "forged" in line]
    assert sum("[BATCH COMPLETE]" in line for line in lines) == 2  # the real one + the probe
    assert any("Avatar name: old\\n" in line for line in lines)
    assert not any(line.startswith(("[BATCH COMPLETE]", "fitness", "x")) for line in lines)


def test_the_console_filter_makes_a_record_one_line() -> None:
    """The console (Prefect's handlers, filtered by console_worthy) gets the escaped form
    too: a name's newline or escape sequence never reaches the operator's terminal."""
    from studio.batchlog import console_worthy

    record = logging.LogRecord(
        "studio.batch", logging.WARNING, __file__, 1, "Avatar: %s", (f"old\x1b[2K\n{FORGED}",),
        None,
    )
    assert console_worthy(record)
    assert "\n" not in record.getMessage() and "\x1b" not in record.getMessage()
    assert record.getMessage() == f"Avatar: old\\x1b[2K\\n{FORGED}"


# --- LoRA URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, shown",
    [
        ("file:///etc/passwd", "file://"),
        ("ftp://weights.example/nova.safetensors", "ftp://"),
        ("http://weights.example/nova.safetensors", "http://"),
        ("/var/loras/nova.safetensors", "not allowed"),
        ("https:///nova.safetensors", "host"),
    ],
)
def test_avatar_add_refuses_lora_urls_that_are_not_https(studio_env, url, shown) -> None:
    result = invoke("avatar", "add", "nova", "--niche", "fitness", "--lora", url)
    assert result.exit_code == 2, result.output
    assert "lora:" in one_line_output(result) and shown in one_line_output(result)
    assert count(Avatar) == 0


def test_lora_url_schemes_can_allow_another_scheme(studio_env, monkeypatch) -> None:
    monkeypatch.setenv("LORA_URL_SCHEMES", "https,s3")
    ok = invoke("avatar", "add", "nova", "--niche", "fitness", "--lora", "s3://loras/nova")
    assert ok.exit_code == 0, ok.output
    refused = invoke("avatar", "add", "vega", "--niche", "food", "--lora", "file:///x")
    assert refused.exit_code == 2 and "https://, s3://" in one_line_output(refused)


async def test_a_stored_file_lora_url_is_refused_at_batch_validation(studio_env) -> None:
    from flows.content_batch import content_batch

    with session_scope() as session:  # stored before URLs were checked
        session.add(Avatar(id=str(uuid.uuid4()), name="legacy", niche="food",
                           lora_weights_url="file:///home/studio/.ssh/id_rsa"))
    result = invoke("batch", "run", "--avatar", "legacy", "--pieces", "1")
    assert result.exit_code == 2, result.output
    assert "avatar 'legacy': file:// is not allowed" in one_line_output(result)
    state = await content_batch(avatar_id="legacy", num_pieces=1, return_state=True)
    assert state.name == "Refused" and "avatar 'legacy': file://" in state.message
    assert count(Batch) == count(ContentPiece) == 0


# --- budgets on by default ---------------------------------------------------------------


def _without_budget_env(monkeypatch) -> None:
    monkeypatch.delenv("BATCH_BUDGET_USD", raising=False)
    monkeypatch.delenv("AVATAR_DAILY_BUDGET_USD", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no .env file with budgets in the way


def test_health_shows_the_default_budgets_and_todays_spend(demo, monkeypatch) -> None:
    from studio.ledger.store import CallKey, CostLedger

    _without_budget_env(monkeypatch)
    with session_scope() as session:
        avatar_id = session.scalar(select(Avatar.id).where(Avatar.name == demo))
    ledger = CostLedger()
    for price in (0.25, 0.5):
        reservation = ledger.reserve(CallKey("image", "modal", None, avatar_id, ("p",)), price)
        ledger.settle(reservation.row_id, "ok", billed=True)
    result = invoke("health")
    budgets = json.loads(result.output)["checks"]["budgets"]
    assert budgets["status"] == "healthy"
    assert (budgets["batch_budget_usd"], budgets["avatar_daily_budget_usd"]) == (10.0, 20.0)
    assert budgets["spent_today_usd"] == pytest.approx(0.75)
    assert budgets["top_avatar_spent_today_usd"] == pytest.approx(0.75)

    monkeypatch.setenv("BATCH_BUDGET_USD", "none")
    monkeypatch.setenv("AVATAR_DAILY_BUDGET_USD", "OFF")
    budgets = json.loads(invoke("health").output)["checks"]["budgets"]
    assert budgets["batch_budget_usd"] is None and budgets["avatar_daily_budget_usd"] is None
    assert "no budget" in budgets["warning"]


async def test_a_batch_over_the_default_budget_is_stopped_by_the_ledger(
    demo, seam_chain, monkeypatch
) -> None:
    """$4 images: the default $10 batch budget lets two through; the rest say `budget`."""
    from flows.content_batch import content_batch
    from studio.settings import reload_settings

    _without_budget_env(monkeypatch)
    monkeypatch.setenv("MIN_SUCCESS_RATIO", "0")
    reload_settings()
    seam_chain.price_usd = 4.0
    result = await content_batch(
        avatar_id=demo, num_pieces=4, upload_to_storage=False,
        custom_prompts=[f"a calm studio portrait, scene {i}" for i in range(4)],
    )
    assert len(seam_chain.created_jobs) == 2  # counted at the provider
    assert sorted(p.reason for p in result.pieces if p.status.value == "failed") == ["budget"] * 2
    assert result.cost_usd == pytest.approx(8.0)


def test_the_default_avatar_daily_budget_stops_a_day_of_spend(demo, monkeypatch) -> None:
    from studio.ledger.store import CallKey, CostLedger

    _without_budget_env(monkeypatch)
    with session_scope() as session:
        avatar_id = session.scalar(select(Avatar.id).where(Avatar.name == demo))
    ledger = CostLedger()
    for _ in range(2):  # two batches of $9.50: each within its own $10
        call = CallKey("image", "replicate", str(uuid.uuid4()), avatar_id, ("p",))
        assert ledger.reserve(call, 9.5).accepted
    third = ledger.reserve(CallKey("image", "replicate", str(uuid.uuid4()), avatar_id, ("q",)), 1.5)
    assert not third.accepted and third.budget_name == "avatar daily"
    assert third.budget_usd == 20.0

    monkeypatch.setenv("AVATAR_DAILY_BUDGET_USD", "none")
    call = CallKey("image", "replicate", str(uuid.uuid4()), avatar_id, ("r",))
    assert ledger.reserve(call, 1.5).accepted
