"""engine/lease_storage.py: the project's servers' lease storage keeps Prefect's filesystem
format and its cross-process file lock, but requests of one server that arrive together
no longer wait a 0.1 s poll of that lock for each other (a slot asked for while another
process gives one back, the fleet's hand-over)."""

from __future__ import annotations

import asyncio
import multiprocessing
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from prefect.locking import _filelock
from prefect.server.concurrency.lease_storage import filesystem

from engine import lease_storage

STORAGES = {
    "prefect": filesystem.ConcurrencyLeaseStorage,
    "project": lease_storage.ConcurrencyLeaseStorage,
}


def _count_lock_waits(monkeypatch) -> list[Path]:
    """Each time a writer finds the index lock taken (and will poll), as Prefect's lock
    sees it: it checks whether the holder is stale before each wait."""
    waits: list[Path] = []
    real = _filelock._remove_stale_lock

    def counting(path: Path) -> None:
        waits.append(path)
        real(path)

    monkeypatch.setattr(_filelock, "_remove_stale_lock", counting)
    return waits


async def _churn(storage: filesystem.ConcurrencyLeaseStorage, n: int) -> None:
    """What a fleet's hand-over does to the storage: leases created, renewed and revoked
    by requests that arrive together."""
    leases = await asyncio.gather(
        *(storage.create_lease([uuid4()], timedelta(seconds=60)) for _ in range(n))
    )
    await asyncio.gather(
        *(storage.renew_lease(lease.id, timedelta(seconds=120)) for lease in leases)
    )
    index = await storage._load_expiration_index()
    assert set(index) == {str(lease.id) for lease in leases}  # no update lost
    for lease in leases:  # each renewal landed in the index the repossessor reads
        assert index[str(lease.id)] == (await storage.read_lease(lease.id)).expiration.isoformat()
    assert await storage.read_expired_lease_ids() == []
    await asyncio.gather(*(storage.revoke_lease(lease.id) for lease in leases))
    assert await storage._load_expiration_index() == {}


@pytest.mark.parametrize("which", ["prefect", "project"])
async def test_requests_arriving_together_queue_in_memory_not_on_the_file_lock(
    tmp_path, monkeypatch, which
):
    waits = _count_lock_waits(monkeypatch)
    await _churn(STORAGES[which](tmp_path), 10)
    if which == "prefect":  # the cost the module exists for (the deletion check: when
        # this fails, Prefect's storage no longer polls for its own requests)
        assert len(waits) >= 10
    else:
        assert waits == []


def test_the_file_lock_still_guards_the_index_across_processes(tmp_path):
    """Two server processes sharing one folder (the lock's reason to be): the in-memory
    queue is per process, the file lock between them, and no update is lost."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        made = pool.map(_create_in_process, [tmp_path, tmp_path])
    index = asyncio.run(lease_storage.ConcurrencyLeaseStorage(tmp_path)._load_expiration_index())
    assert set(index) == {lease_id for ids in made for lease_id in ids}
    assert len(index) == 40


def _create_in_process(folder: Path) -> list[str]:
    async def create() -> list[str]:
        storage = lease_storage.ConcurrencyLeaseStorage(folder)
        leases = await asyncio.gather(
            *(storage.create_lease([uuid4()], timedelta(seconds=60)) for _ in range(20))
        )
        return [str(lease.id) for lease in leases]

    return asyncio.run(create())


def test_prefect_loads_it_as_a_lease_storage_module():
    """What the server does with `PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE`: import the
    module and check it against its protocol."""
    from prefect.server.concurrency.lease_storage import get_concurrency_lease_storage
    from prefect.settings import PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE, temporary_settings

    setting = {PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE: "engine.lease_storage"}
    with temporary_settings(updates=setting):
        storage = get_concurrency_lease_storage()
    assert isinstance(storage, lease_storage.ConcurrencyLeaseStorage)
