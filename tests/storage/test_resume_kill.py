"""A real kill -9 of a batch process at the image step and at the upload step, then resume.

The batch runs in a child process (tests/storage/crash_runner.py) against the session's
Prefect API. The child kills itself with SIGKILL at the K-th image render or the K-th
remote upload; the resumed run must then finish the batch with no image rendered twice,
no file uploaded twice, and exactly one row and one stored object per piece.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece
from studio.db.piece_progress import SAVED

ROOT = Path(__file__).resolve().parents[2]
PIECES = 10


def _run(env: dict[str, str], probe_dir: Path, batch_id: str, *extra: str) -> int:
    command = [
        sys.executable,
        "-m",
        "tests.storage.crash_runner",
        "--batch-id",
        batch_id,
        "--pieces",
        str(PIECES),
        "--probe-dir",
        str(probe_dir),
        *extra,
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=600)
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stderr.decode(errors="replace")[-4000:])
    return done.returncode


def _child_env(settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "PREFECT_"))}
    env.update(
        {
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_HOME": str(settings.studio_home / "prefect-home"),
            "STUDIO_HOME": str(settings.studio_home),
            "LOG_FILE": str(settings.log_file),
            "PYTHONPATH": str(ROOT),
        }
    )
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    env.update(extra or {})
    return env


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _statuses(batch_id: str) -> Counter[str]:
    with session_scope() as session:
        rows = session.execute(
            select(ContentPiece.status).where(ContentPiece.batch_id == batch_id)
        ).scalars()
        return Counter(rows)


def _assert_one_row_per_piece(batch_id: str) -> list[ContentPiece]:
    with session_scope() as session:
        rows = list(session.scalars(select(ContentPiece).where(ContentPiece.batch_id == batch_id)))
        batches = session.scalar(
            select(func.count()).select_from(Batch).where(Batch.id == batch_id)
        )
    assert batches == 1
    assert len(rows) == PIECES
    assert len({r.id for r in rows}) == PIECES
    assert all(r.status in SAVED for r in rows)
    return rows


@pytest.fixture
def demo_home(prefect_api, studio_env):
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    return studio_env


def test_kill_at_image_step_then_resume(demo_home, tmp_path) -> None:
    probes = tmp_path / "probes"
    probes.mkdir()
    batch_id = str(uuid.uuid4())
    env = _child_env(demo_home)

    assert _run(env, probes, batch_id, "--crash-at", "image:4") == -signal.SIGKILL
    first = _lines(probes / "renders.log")
    assert len(first) == 3  # killed at the 4th render: three images exist and are staged
    # the plan was durable, and so was each image the moment it was staged
    assert _statuses(batch_id) == Counter({"generated": 3, "planned": PIECES - 3})
    with session_scope() as session:
        generated = set(
            session.scalars(
                select(ContentPiece.id).where(
                    ContentPiece.batch_id == batch_id, ContentPiece.status == "generated"
                )
            )
        )
    assert generated == set(first)

    assert _run(env, probes, batch_id, "--resume") == 0
    renders = Counter(_lines(probes / "renders.log"))
    assert len(renders) == PIECES
    assert max(renders.values()) == 1  # no image generated twice
    assert set(first) <= set(renders)
    hooks = Counter(_lines(probes / "hooks.log"))
    assert len(hooks) == PIECES and max(hooks.values()) == 1

    rows = _assert_one_row_per_piece(batch_id)
    content = demo_home.studio_home / "content"
    files = [p for p in content.rglob("*.png") if batch_id in str(p)]
    published = [r for r in rows if r.status == "published"]
    assert sorted(str(p) for p in files) == sorted(
        str(Path(r.url.removeprefix("file://"))) for r in published
    )


@pytest.fixture
def postgres_home(prefect_api, postgres_url, tmp_path, monkeypatch):
    """The same pipeline on a fresh PostgreSQL database (resume must hold on both)."""
    from studio.bootstrap import ensure_demo_avatar
    from studio.db.engine import dispose_engines
    from tests.conftest import use_database
    from tests.infra.postgres import create_database

    settings = use_database(monkeypatch, tmp_path / "studio", create_database(postgres_url))
    ensure_demo_avatar()
    yield settings
    dispose_engines()


def test_kill_at_upload_step_then_resume(
    postgres_home, s3_server, s3_bucket, s3_private_bucket, tmp_path
) -> None:
    probes = tmp_path / "probes"
    probes.mkdir()
    batch_id = str(uuid.uuid4())
    env = _child_env(
        postgres_home,
        {
            "R2_ENDPOINT_URL": s3_server.endpoint_url,
            "R2_ACCESS_KEY_ID": s3_server.access_key,
            "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
            "R2_BUCKET_NAME": s3_bucket,
            "R2_PUBLIC_URL": s3_server.public_url(s3_bucket),
            "R2_PRIVATE_BUCKET_NAME": s3_private_bucket,
        },
    )

    assert _run(env, probes, batch_id, "--crash-at", "upload:3") == -signal.SIGKILL
    assert len(_lines(probes / "puts.log")) == 2  # killed at the 3rd upload
    before = _statuses(batch_id)
    assert sum(before.values()) == PIECES
    assert set(before) <= {"checked"}  # every piece got through safety, none was saved
    rendered_before = Counter(_lines(probes / "renders.log"))
    assert len(rendered_before) == PIECES
    hooked_before = _lines(probes / "hooks.log")
    checked_before = _lines(probes / "checks.log")
    assert len(hooked_before) == PIECES

    assert _run(env, probes, batch_id, "--resume") == 0
    renders = Counter(_lines(probes / "renders.log"))
    assert renders == rendered_before  # the resume generated nothing
    assert _lines(probes / "hooks.log") == hooked_before  # no hook written (paid) again
    assert _lines(probes / "checks.log") == checked_before  # no piece moderated again

    puts = Counter(_lines(probes / "puts.log"))
    assert max(puts.values()) == 1  # no file uploaded twice (HEAD-by-checksum no-op)

    rows = _assert_one_row_per_piece(batch_id)
    published = [r for r in rows if r.status == "published"]
    buckets = {"capa1": s3_bucket, "capa2": s3_private_bucket, "capa3": s3_private_bucket}
    keys = sorted(
        o["Key"]
        for bucket in (s3_bucket, s3_private_bucket)
        for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    )
    assert keys == sorted(r.storage_key for r in published)  # one object each, no staging
    for row in published:
        assert row.storage_backend == "r2" and not row.needs_sync
        bucket = buckets[row.access_tier]
        head = s3_server.client().head_object(Bucket=bucket, Key=row.storage_key)
        assert head["Metadata"]["sha256"] == row.checksum


async def test_resuming_a_finished_batch_changes_nothing(demo_home) -> None:
    from flows.content_batch import content_batch
    from studio.providers.build import PREVIEW
    from studio.request import BatchRequestError

    first = await content_batch(avatar_id="demo", num_pieces=6, seed=3)
    rendered = PREVIEW.rendered
    with session_scope() as session:
        before = {
            r.id: (r.status, r.url, r.checksum)
            for r in session.scalars(
                select(ContentPiece).where(ContentPiece.batch_id == first.batch_id)
            )
        }
    with pytest.raises(BatchRequestError, match=f"batch '{first.batch_id}' is already complete"):
        await content_batch(avatar_id="demo", resume_batch_id=first.batch_id)
    assert PREVIEW.rendered == rendered
    with session_scope() as session:
        after = {
            r.id: (r.status, r.url, r.checksum)
            for r in session.scalars(
                select(ContentPiece).where(ContentPiece.batch_id == first.batch_id)
            )
        }
    assert after == before


def test_resume_of_unknown_batch_is_refused(prefect_api, studio_env) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    unknown = str(uuid.uuid4())
    result = CliRunner().invoke(app, ["batch", "resume", unknown])
    assert result.exit_code == 2
    assert f"no batch with id '{unknown}'" in " ".join(result.output.split())
    not_an_id = CliRunner().invoke(app, ["batch", "resume", "no-such-batch"])
    assert not_an_id.exit_code == 2 and "is not a batch id" in not_an_id.output


def test_kill_at_image_step_then_resume_on_another_host(
    postgres_home, s3_server, tmp_path
) -> None:
    """Host A dies mid image step; host B (its own STUDIO_HOME, empty disk) resumes from
    the shared database and the private S3 staging: no finished image is made again."""
    probes = tmp_path / "probes"
    probes.mkdir()
    batch_id = str(uuid.uuid4())
    content, private = s3_server.new_bucket("content", public=True), s3_server.new_bucket("staging")
    store = {
        "R2_ENDPOINT_URL": s3_server.endpoint_url,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET_NAME": content,
        "R2_PUBLIC_URL": s3_server.public_url(content),
        "R2_STAGING_BUCKET": private,
    }
    host_a = _child_env(postgres_home, store)
    home_b = tmp_path / "host-b"
    host_b = {**host_a, "STUDIO_HOME": str(home_b), "PREFECT_HOME": str(home_b / "prefect")}

    assert _run(host_a, probes, batch_id, "--crash-at", "image:5") == -signal.SIGKILL
    first = _lines(probes / "renders.log")
    assert len(first) == 4
    assert _statuses(batch_id) == Counter({"generated": 4, "planned": PIECES - 4})
    # host A is gone with its disk: the rows name files host B cannot read
    shutil.rmtree(postgres_home.studio_home / "work")

    assert _run(host_b, probes, batch_id, "--resume") == 0
    renders = Counter(_lines(probes / "renders.log"))
    assert len(renders) == PIECES and max(renders.values()) == 1  # none bought twice
    rows = _assert_one_row_per_piece(batch_id)
    # host B fetched host A's images from the staging bucket instead of buying them (the
    # renders above), and once the batch completed its staging went, there and on B's disk
    published = [r for r in rows if r.status == "published"]
    listing = [
        o["Key"]
        for bucket in (content, private)
        for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    ]
    assert sorted(listing) == sorted(r.storage_key for r in published)
    assert not [k for k in listing if k.startswith("staging/")]
    assert not (home_b / "work" / batch_id).exists()


async def test_cli_resume_of_a_complete_batch_is_refused_before_any_run(demo_home) -> None:
    from typer.testing import CliRunner

    from cli.app import app
    from flows.content_batch import content_batch

    done = await content_batch(avatar_id="demo", num_pieces=3, seed=8)
    result = CliRunner().invoke(app, ["batch", "resume", done.batch_id])
    assert result.exit_code == 2
    assert f"batch '{done.batch_id}' is already complete" in " ".join(result.output.split())


async def test_a_second_resume_of_a_batch_another_resume_finished_is_skipped(demo_home) -> None:
    """Crash recovery and an operator may both resume a crashed batch without overlapping:
    the first finishes it before the second takes the lease. The second (a run created to
    resume, tagged `resumes:<run>`) ends Completed 'Skipped' and spends nothing; it is not
    refused as if someone had asked to resume a finished batch."""
    from prefect import tags

    from flows.batch_state_hooks import RESUMES_TAG_PREFIX
    from flows.content_batch import content_batch
    from studio.providers.build import PREVIEW

    first = await content_batch(avatar_id="demo", num_pieces=4, seed=5)
    rendered = PREVIEW.rendered
    with tags("operator-resume", f"{RESUMES_TAG_PREFIX}{first.batch_id}"):
        state = await content_batch(
            avatar_id="demo", resume_batch_id=first.batch_id, return_state=True
        )
    assert state.is_completed() and state.name == "Skipped", state
    assert "before this resume" in (state.message or "")
    assert PREVIEW.rendered == rendered  # nothing generated again
