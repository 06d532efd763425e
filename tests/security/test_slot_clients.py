"""A process's slot requests on a `studio server` (CSRF protection on, Prefect's database
on PostgreSQL, as a fleet runs it): several sent at once on a new API client are answered
at once.

Prefect's client fetches a CSRF token before its first write and the server keeps one
token per client, so writes that start together on a new client each fetched one, voided
each other's and were retried after 2, 4, 8 s (an increment took 13 s in the fleet bench
with four sent at once). engine/provider_slots.py `ApiClients` lets a new client's first
request go alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    temporary_settings,
)

from engine.provider_slots import LeasePool
from tests.infra.postgres import create_database
from tests.security.conftest import SecuredServer, start_secured_server


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory, postgres_url) -> Iterator[SecuredServer]:
    """`studio server` on PostgreSQL: SQLite would answer concurrent writes with 503s
    ("database is locked"), which is why PROVIDER_SLOT_ASKS_IN_FLIGHT stays 1 there."""
    prefect_db = create_database(postgres_url).replace("+psycopg", "+asyncpg", 1)
    with start_secured_server(tmp_path_factory.mktemp("fleet-server"), postgres_url,
                              PREFECT_API_DATABASE_CONNECTION_URL=prefect_db) as server:
        yield server


@pytest.mark.parametrize("asks_in_flight", [4])
async def test_asks_sent_together_on_a_new_client_get_no_csrf_refusal(
    fleet_server, monkeypatch, asks_in_flight
) -> None:
    answers: list[int] = []
    real = PrefectClient.increment_concurrency_slots_with_lease

    async def recorded(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            response = await real(self, *args, **kwargs)
        except Exception as exc:
            answers.append(getattr(getattr(exc, "response", None), "status_code", 0))
            raise
        answers.append(response.status_code)
        return response

    monkeypatch.setattr(PrefectClient, "increment_concurrency_slots_with_lease", recorded)
    with fleet_server.http() as api:
        found = api.get("/v2/concurrency_limits/provider:modal")
        if found.status_code == 404:
            api.post("/v2/concurrency_limits/", json={"name": "provider:modal", "limit": 4})
        else:
            api.patch("/v2/concurrency_limits/provider:modal", json={"limit": 4})
    # no retry: a 403 (or any refusal) is the answer the pool sees, not hidden by a backoff
    with temporary_settings({PREFECT_API_URL: fleet_server.api_url,
                             PREFECT_API_AUTH_STRING: fleet_server.auth_string,
                             PREFECT_CLIENT_MAX_RETRIES: 0}):
        pool = LeasePool("modal", 4, poll_seconds=0.05, linger_seconds=0,
                         asks_in_flight=asks_in_flight)
        leases = await asyncio.wait_for(asyncio.gather(*(pool.acquire() for _ in range(4))), 20)
        for lease in leases:
            pool.release(lease)
        await pool.drain()
    assert answers == [200] * 4
