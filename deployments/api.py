"""Which Prefect server the operator's commands talk to, and what "unreachable" means.

`studio batch submit`, `studio batch status`, `studio limits` and `studio automations
apply` act on a long-lived server that workers poll. Without PREFECT_API_URL, a Prefect
client would quietly start a throw-away ephemeral server, where a submitted batch waits
forever for a worker and an automation alerts nobody; so these commands use the
configured URL, else the address `prefect server start` listens on.

Before anything else they ask the server something that needs the credential
(`GET /hello`; `/health` answers anyone, so it cannot tell a missing
PREFECT_API_AUTH_STRING from a good one): no answer is `ServerUnreachable`, a 401 is
`CredentialRefused`; both carry one line naming the URL (and the setting), which the
commands print before exiting 1, instead of a traceback from the first real call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

#: where `prefect server start` serves its API by default
DEFAULT_API_URL = "http://127.0.0.1:4200/api"
#: the client setting that carries the server's auth string (studio server prints it)
CREDENTIAL_SETTING = "PREFECT_API_AUTH_STRING"


class ServerUnreachable(Exception):
    """No Prefect API answered at `url`."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"no Prefect server answered at {url} ({reason}); start one with "
            "`studio server` or set PREFECT_API_URL to yours"
        )
        self.url = url


class CredentialRefused(Exception):
    """The server at `url` answered 401/403: no credential, or not its auth string.

    The message names the setting and the URL, never the credential itself."""

    def __init__(self, url: str, status: int, sent: bool) -> None:
        what = (
            f"refused the credential in {CREDENTIAL_SETTING}" if sent
            else f"needs a credential and {CREDENTIAL_SETTING} is not set"
        )
        super().__init__(
            f"the Prefect server at {url} {what} (HTTP {status}); set "
            f"{CREDENTIAL_SETTING} to the server's auth string (`studio server` says where "
            "it is kept)"
        )
        self.url = url
        self.status = status


def api_url() -> str:
    return get_current_settings().api.url or DEFAULT_API_URL


def credential_sent() -> bool:
    """Whether this process sends an auth string (its value is never read out)."""
    secret = get_current_settings().api.auth_string
    return bool(secret and secret.get_secret_value())


def ui_url() -> str:
    """PREFECT_UI_URL, else what Prefect derives from the API URL (the same host, no /api)."""
    with temporary_settings(updates={PREFECT_API_URL: api_url()}):
        settings = get_current_settings()
        return (settings.ui_url or settings.api.url.removesuffix("/api")).rstrip("/")


def flow_run_link(flow_run_id: object) -> str:
    return f"{ui_url()}/runs/flow-run/{flow_run_id}"


async def check_access(client: PrefectClient, url: str) -> None:
    """Ask `client`'s server a question that needs the credential; raise what went wrong.

    ServerUnreachable when nothing (or not a Prefect API) answers, CredentialRefused on
    401/403."""
    try:
        await client.hello()
    except httpx.HTTPStatusError as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise CredentialRefused(url, status, credential_sent()) from None
        raise ServerUnreachable(url, f"HTTP {status}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise ServerUnreachable(url, type(exc).__name__) from None


@asynccontextmanager
async def server_client() -> AsyncIterator[PrefectClient]:
    """A client of the operator's server, its access checked first (see check_access)."""
    url = api_url()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        async with get_client() as client:
            await check_access(client, url)
            yield client
