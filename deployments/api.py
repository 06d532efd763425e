"""Which Prefect server the operator's commands talk to, and what "unreachable" means.

`studio batch submit`, `studio batch status` and `studio automations apply` act on a
long-lived server that workers poll. Without PREFECT_API_URL, a Prefect client would
quietly start a throw-away ephemeral server, where a submitted batch waits forever for
a worker and an automation alerts nobody; so these commands use the configured URL,
else the address `prefect server start` listens on, and say which URL they tried when
nothing answers there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prefect.client.orchestration import PrefectClient, get_client
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

#: where `prefect server start` serves its API by default
DEFAULT_API_URL = "http://127.0.0.1:4200/api"


class ServerUnreachable(Exception):
    """No Prefect API answered at `url`."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"no Prefect server answered at {url} ({reason}); start one with "
            "`prefect server start` or set PREFECT_API_URL to yours"
        )
        self.url = url


def api_url() -> str:
    return get_current_settings().api.url or DEFAULT_API_URL


def ui_url() -> str:
    """PREFECT_UI_URL, else what Prefect derives from the API URL (the same host, no /api)."""
    with temporary_settings(updates={PREFECT_API_URL: api_url()}):
        settings = get_current_settings()
        return (settings.ui_url or settings.api.url.removesuffix("/api")).rstrip("/")


def flow_run_link(flow_run_id: object) -> str:
    return f"{ui_url()}/runs/flow-run/{flow_run_id}"


@asynccontextmanager
async def server_client() -> AsyncIterator[PrefectClient]:
    """A client of the operator's server; ServerUnreachable when its /health does not answer."""
    url = api_url()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        async with get_client() as client:
            problem = await client.api_healthcheck()
            if problem is not None:
                raise ServerUnreachable(url, type(problem).__name__)
            yield client
