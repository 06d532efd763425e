"""Fixtures shared by the whole suite: a real Prefect API, an isolated studio home,
and the real PostgreSQL and SeaweedFS servers from tests/infra."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from studio.runtime_env import apply_prefect_defaults

apply_prefect_defaults()
# the suite's deployment runs and Claude/OpenAI fallbacks run on stand-ins on purpose
# (studio/stand_ins.py); tests/flows/test_stand_in_policy.py sets it false
os.environ.setdefault("ALLOW_STAND_INS", "true")

pytest_plugins = ["tests.infra.postgres", "tests.infra.seaweedfs"]


@pytest.fixture(scope="session", autouse=True)
def _warm_processes() -> Iterator[Path]:
    """The flow-run processes the suite's workers start fork from warm processes of this
    session's own (engine/warm_start.py): in a folder of its own (a short path: a socket
    path holds 107 bytes), idle ones exit within a minute, and all go when it ends."""
    import shutil
    import tempfile

    from tests.infra.warm import stop_warm_processes

    folder = Path(tempfile.mkdtemp(prefix="sw-", dir="/tmp"))
    os.environ["STUDIO_WARM_DIR"] = str(folder)
    os.environ["STUDIO_WARM_IDLE_SECONDS"] = "60"
    yield folder
    stop_warm_processes(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real, temporary Prefect server (SQLite-backed) for the test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def use_database(monkeypatch: pytest.MonkeyPatch, home: Path, database_url: str | None):
    """Point the pipeline at `home` and `database_url`, then initialise schema and templates."""
    from studio.bootstrap import initialise
    from studio.db.engine import dispose_engines
    from studio.settings import reload_settings

    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.setenv("LOG_FILE", str(home / "logs" / "app.log"))
    if database_url:
        monkeypatch.setenv("DATABASE_URL", database_url)
    else:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    dispose_engines()
    settings = reload_settings()
    initialise(settings)
    _reset_process_caches()
    return settings


def _reset_process_caches() -> None:
    import tasks.generate_images as generate_images

    generate_images._chain = None


@pytest.fixture
def studio_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An isolated studio home with a fresh SQLite database, schema and templates."""
    settings = use_database(monkeypatch, tmp_path / "studio", None)
    yield settings
    from studio.db.engine import dispose_engines

    dispose_engines()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The same test on the embedded SQLite default and on a real PostgreSQL."""
    if request.param == "postgresql":
        from tests.infra.postgres import create_database

        server_url = request.getfixturevalue("postgres_url")
        url = create_database(server_url)
    else:
        url = None
    settings = use_database(monkeypatch, tmp_path / "studio", url)
    yield settings
    from studio.db.engine import dispose_engines

    dispose_engines()


@pytest.fixture(autouse=True)
def _fleet_limits_put_back() -> Iterator[None]:
    """A batch installs the process's pace keeper (engine/provider_pace.py), which then
    hears every later test's throttling answers and moves `provider:<name>` on the API
    those tests share: a test that throttled Replicate left its limit at 3, and a later
    test that needs four calls in flight waited for a slot until its calls timed out.
    After each test: the limits the keeper moved go back to their ceilings, and the
    keeper goes (the next batch installs a fresh one)."""
    yield
    from engine import provider_pace

    keeper = provider_pace.keeper()
    if keeper is None:
        return
    keeper.flush(5.0)
    moved = {o.provider for o in keeper.outcomes if o.change is not None}
    if moved:
        from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

        from studio.providers.entry import limit_name

        for client in list(keeper._clients.values()):
            for provider in moved:
                ceiling = keeper.ceilings.get(provider)
                if ceiling is None:
                    continue
                try:
                    client.update_global_concurrency_limit(
                        limit_name(provider), GlobalConcurrencyLimitUpdate(limit=ceiling)
                    )
                except Exception:  # a server that is gone: nothing to put back
                    pass
    provider_pace.uninstall()
