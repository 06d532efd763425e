"""A deployment run as light as an in-process one (issue 20), on the real `studio server`
and process worker of tests/prefect_server/conftest.py.

- prefect.yaml's `command` job variable starts `python -m engine.flow_run_process`
  directly: no `prefect.runner._workspace_supervisor` process (it imported Prefect once
  more per run); the run's last log lines still reach the API although the process ends
  with `os._exit` (engine/flow_run_process.py).
- the state hooks still fire without the supervisor: a flow-run process killed -9 is
  reported Crashed by the worker, which runs the flow's on_crashed hook itself (the
  batch row says so); a cancelled run runs its on_cancellation hook.
- one boto3 session and one SSL context per process (studio/storage/r2.py,
  engine/ssl_reuse.py), without sharing what must stay per client.
"""

from __future__ import annotations

import os
import shlex
import signal
import ssl
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from studio.avatars import add_avatar
from studio.db.engine import session_scope
from studio.db.models import Batch
from tests.emulators.base import Behaviour
from tests.emulators.comfyui import ComfyUIEmulator
from tests.polling import wait_for

PIECES = 2


def flow_run_processes(run_id: str) -> dict[int, str]:
    """pid -> command line of every process the worker started for `run_id` (Prefect
    passes the run's id in PREFECT__FLOW_RUN_ID)."""
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
    return {pid: line.decode(errors="replace") for pid, line in found.items()}




def comfyui_env(url: str) -> dict[str, str]:
    return {
        "COMFYUI_ENABLED": "true",
        "COMFYUI_ENDPOINT": url,
        "COMFYUI_POLL_INTERVAL": "0.05",
        "LORA_INFERENCE_PROVIDER_ORDER": "comfyui",
    }


def new_avatar() -> str:
    name = f"light-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        add_avatar(session, name, "travel", f"https://w.example/{name}.safetensors", "on-demand")
    return name


def start_hanging_batch(prefect_stack, comfyui: ComfyUIEmulator) -> str:
    """A batch whose images ComfyUI holds: its flow-run process is alive until released."""
    run_id = start_batch(prefect_stack, comfyui)
    wait_for("prompts at ComfyUI", lambda: comfyui.counters.requests("prompt") >= PIECES)
    return run_id


def batch_row(run_id: str) -> tuple[str, str, int]:
    """status, error, resumes of the batch the run made (its id is the run's)."""
    with session_scope() as session:
        batch = session.get(Batch, run_id)
        assert batch is not None
        return batch.status, batch.error or "", len(batch.resumes or [])


def test_the_deployments_start_the_engine_without_the_workspace_supervisor(
    prefect_stack, stack_db
):
    with prefect_stack.client() as api:
        deployment = api.get("/deployments/name/content-batch/on-demand").json()
    command = shlex.split(deployment["job_variables"]["command"])
    assert command == [sys.executable, "-m", "engine.flow_run_process"]

    with ComfyUIEmulator(Behaviour(seed=21, hang=True)) as comfyui:
        run_id = start_hanging_batch(prefect_stack, comfyui)
        processes = flow_run_processes(run_id)
        comfyui.behaviour.hang = False
        run = prefect_stack.wait_final(run_id)
    assert run["state_type"] == "COMPLETED", prefect_stack.tail("worker")
    assert processes, "the flow-run process was not found"
    assert not [c for c in processes.values() if "_workspace_supervisor" in c], processes
    assert [c for c in processes.values() if "-m engine.flow_run_process" in c], processes
    # the engine's last line is logged as the process ends: os._exit came after the drain
    messages = prefect_stack.wait_logs(
        [run_id], lambda found: any("Finished in state Completed" in m for m in found)
    )
    assert any("Finished in state Completed" in m for m in messages), messages[-5:]
    assert batch_row(run_id)[0] == "completed"


def test_a_killed_flow_run_process_still_runs_the_crash_hook(prefect_stack, stack_db):
    """kill -9 of the run's process: the worker reports the run Crashed and, with no
    supervisor to do it, runs the flow's on_crashed hook itself: the row says Crashed
    in the hook's words (crash recovery, when it gets there first, writes 'run <name>
    (<id>) ended Crashed' instead)."""
    with ComfyUIEmulator(Behaviour(seed=22, hang=True)) as comfyui:
        run_id = start_hanging_batch(prefect_stack, comfyui)
        processes = flow_run_processes(run_id)
        assert processes, "the flow-run process was not found"
        for pid in processes:
            os.kill(pid, signal.SIGKILL)
        crashed = prefect_stack.wait_final(run_id)
        comfyui.behaviour.hang = False
    assert crashed["state_type"] == "CRASHED", crashed["state"]
    messages = prefect_stack.wait_logs(
        [run_id], lambda found: any("Hook 'write_ending' finished" in m for m in found)
    )
    assert any("Running hook 'write_ending' in response to entering state 'Crashed'" in m
               for m in messages), messages[-10:]
    assert any("Hook 'write_ending' finished running successfully" in m for m in messages)
    status, reason, resumes = batch_row(run_id)
    # the hook's words; unless crash recovery (its automation applied by another test of
    # this session's server) resumed the batch since
    assert (status, reason.split(":")[0]) == ("crashed", f"run {run_id} ended Crashed") or (
        resumes
    ), (status, reason)


def test_a_cancelled_run_still_runs_the_cancellation_hook(prefect_stack, stack_db):
    with ComfyUIEmulator(Behaviour(seed=23, hang=True)) as comfyui:
        run_id = start_hanging_batch(prefect_stack, comfyui)
        cancel(prefect_stack, run_id)
        final = prefect_stack.wait_final(run_id)
        comfyui.behaviour.hang = False
    assert final["state_type"] == "CANCELLED", final["state"]
    wait_for("the run's process to end", lambda: flow_run_processes(run_id) == {}, 60)
    messages = prefect_stack.wait_logs(
        [run_id], lambda found: any("Hook 'write_ending' finished" in m for m in found)
    )
    assert any("Hook 'write_ending' finished running successfully" in m for m in messages), (
        messages[-10:]
    )
    assert batch_row(run_id)[0] == "cancelled"


# -- per process, not per client: SSL context and boto3 session ---------------------------


def test_prefect_clients_share_one_ssl_context_unless_given_their_own():
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from engine import ssl_reuse

    ssl_reuse.install()
    ssl_reuse.install()  # idempotent: wrapped once

    def context(client) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
        return client._client._transport._pool._ssl_context

    for url in ("https://prefect.example/api", "http://127.0.0.1:9/api"):
        with temporary_settings({PREFECT_API_URL: url}):
            clients = [get_client(), get_client(), get_client(sync_client=True)]
            own = ssl.create_default_context()
            given = get_client(httpx_settings={"verify": own})
        assert len({id(context(c)) for c in clients}) == 1, url
        assert context(given) is own, url
        assert context(clients[0]) is ssl_reuse.shared_context(url)
        assert context(clients[0]).verify_mode == ssl.CERT_REQUIRED
        assert context(clients[0]).check_hostname
        cas = context(clients[0]).cert_store_stats()["x509_ca"]
        # https: certifi's bundle, as Prefect loads it; plain http never does TLS: no CA
        # is loaded (the cost), and a TLS connection through it would be refused
        assert (cas > 0) if url.startswith("https") else (cas == 0), (url, cas)


def test_a_worker_process_shares_one_ssl_context_through_the_collection_entry_point():
    """`prefect worker start` imports no project code, but it loads installed Prefect
    collections when it looks up its worker type: the package's entry point installs the
    shared context there (the worker opens two API clients per run it submits)."""
    probe = (
        "from prefect.client.orchestration import PrefectClient\n"
        "assert not hasattr(PrefectClient.__init__, '__studio_shared_ssl__')\n"
        "from prefect.cli._worker_utils import _load_worker_class\n"
        "assert _load_worker_class('process') is not None\n"  # what the worker CLI calls
        "print(getattr(PrefectClient.__init__, '__studio_shared_ssl__', False))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, cwd=tempfile.gettempdir())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


def test_s3_clients_of_one_process_share_one_session_not_their_hooks(s3_server, s3_bucket):
    from studio.storage import r2
    from tests.storage.conftest import r2_settings

    settings = r2_settings(s3_server, s3_bucket)
    first, second = r2.build_s3_client(settings), r2.build_s3_client(settings)
    assert first is not second
    assert first._loader is second._loader  # botocore's data, loaded once per process
    seen: list[str] = []
    first.meta.events.register("before-call.s3.HeadBucket", lambda **_: seen.append("first"))
    second.head_bucket(Bucket=s3_bucket)
    assert seen == []  # a hook on one client (tests add them) never fires on another
    first.head_bucket(Bucket=s3_bucket)
    assert seen == ["first"]


def test_a_runs_end_does_not_wait_for_its_suspension_observer(prefect_stack, monkeypatch):
    """Prefect 3.9 joins a deployment run's suspension observer (a thread that polls its
    stop every 0.2 s) before the engine returns; the flow-run process hands that stop to
    a thread of its own (engine/suspension_observer.py). The observer still starts and
    is ready before the run goes on; it ends by itself after. Fails with `install()` a
    no-op: Prefect's exit has joined the thread, so it is no longer alive."""
    import threading

    import prefect.flow_engine as flow_engine
    from prefect import flow
    from prefect._flow_run_suspension import FlowRunSuspensionRequest
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from engine import suspension_observer

    @flow(name="suspension-observer-probe")
    def probe() -> None:
        """A flow to create a run of: never run."""

    monkeypatch.setattr(flow_engine, "observe_flow_run_suspension",
                        flow_engine.observe_flow_run_suspension)  # restored after the test
    suspension_observer.install()
    suspension_observer.install()  # idempotent: wrapped once
    api = {PREFECT_API_URL: prefect_stack.api_url,
           PREFECT_API_AUTH_STRING: prefect_stack.auth_string}
    with temporary_settings(api):  # the studio server, its events stream included
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(probe)
        before = set(threading.enumerate())
        with flow_engine.observe_flow_run_suspension(run.id, FlowRunSuspensionRequest()):
            observers = [t for t in threading.enumerate() if t not in before]
    assert observers, "the observer thread started"
    assert any(t.is_alive() for t in observers), "the run's end waited for the observer"
    for thread in observers:
        thread.join(timeout=5)
    assert not any(t.is_alive() for t in observers), "the observer stopped by itself"


def test_a_failing_engine_exits_with_its_code_and_says_why(tmp_path):
    """Without a flow-run id the engine logs the error and exits 1 (prefect.engine's
    own behaviour): the same through engine.flow_run_process, whose os._exit keeps it."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PREFECT__FLOW_RUN_ID"}
    done = subprocess.run(
        [sys.executable, "-m", "engine.flow_run_process"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Invalid flow run id" in done.stdout + done.stderr


@pytest.mark.parametrize("code,expected", [(None, 0), (0, 0), (3, 3), ("bye", 1)])
def test_exit_codes_follow_the_interpreters_rules(code, expected):
    from engine.flow_run_process import _exit_code

    assert _exit_code(code) == expected


def test_the_build_step_names_this_interpreter():
    from engine.flow_run_process import command

    assert shlex.split(command()["command"]) == [sys.executable, "-m", "engine.flow_run_process"]


def test_python_m_deployments_serve_looks_for_runs_every_second(monkeypatch):
    from deployments.serve import query_seconds

    monkeypatch.delenv("PREFECT_RUNNER_POLL_FREQUENCY", raising=False)
    assert query_seconds() == 0.5  # Prefect's runner default, 10 s, is ~5 s per batch
    monkeypatch.setenv("PREFECT_RUNNER_POLL_FREQUENCY", "5")
    assert query_seconds() == 5.0  # an operator's own setting wins


# -- forked from a warm process (engine/warm_start.py) -------------------------------------


@pytest.fixture(scope="module")
def warm_comfyui() -> Iterator[ComfyUIEmulator]:
    """One emulator for the warm tests: their runs share one environment, so one warm
    process serves them all once two runs have gone cold."""
    with ComfyUIEmulator(Behaviour(seed=24)) as comfyui:
        yield comfyui


def warm_log() -> str:
    folder = Path(os.environ["STUDIO_WARM_DIR"])
    return "".join(log.read_text() for log in folder.glob("*.log"))


def forked(run_id: str) -> bool:
    return f"flow run {run_id}: pid" in warm_log()


def warm_batch(prefect_stack, comfyui: ComfyUIEmulator, *, hang: bool) -> str:
    """A batch on `comfyui`, after enough runs in its environment for a warm process to
    serve it; with `hang`, its images wait at ComfyUI (the process lives until released)."""
    for _ in range(3):
        comfyui.behaviour.hang = False
        run_id = start_batch(prefect_stack, comfyui)
        run = prefect_stack.wait_final(run_id)
        assert run["state_type"] == "COMPLETED", prefect_stack.tail("worker")
        if forked(run_id):
            break
    else:
        raise AssertionError(f"no run was forked from a warm process:\n{warm_log()}")
    comfyui.behaviour.hang = hang
    comfyui.counters.reset()
    run_id = start_batch(prefect_stack, comfyui)
    if hang:
        wait_for("prompts at ComfyUI", lambda: comfyui.counters.requests("prompt") >= PIECES)
    wait_for("the run to be forked from the warm process", lambda: forked(run_id), 30)
    return run_id


def start_batch(prefect_stack, comfyui: ComfyUIEmulator) -> str:
    created = prefect_stack.create_run(
        "content-batch/on-demand",
        {"avatar_id": new_avatar(), "num_pieces": PIECES, "include_hooks": False},
        job_variables={"env": comfyui_env(comfyui.url)},
    )
    assert created.status_code in (200, 201), created.text  # 200: Prefect's created-at race
    return created.json()["id"]


def cancel(prefect_stack, run_id: str) -> None:
    """Cancel as the UI does: the run to Cancelling (the worker then stops its process)."""
    with prefect_stack.client() as api:
        cancelled = api.post(
            f"/flow_runs/{run_id}/set_state",
            json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True},
        )
    assert cancelled.status_code in (200, 201), cancelled.text


def test_a_warm_forked_run_completes_and_delivers_its_last_logs(
    prefect_stack, stack_db, warm_comfyui
):
    run_id = warm_batch(prefect_stack, warm_comfyui, hang=False)
    run = prefect_stack.wait_final(run_id)
    assert run["state_type"] == "COMPLETED", prefect_stack.tail("worker")
    messages = prefect_stack.wait_logs(
        [run_id], lambda found: any("Finished in state Completed" in m for m in found)
    )
    assert any("[BATCH START]" in m for m in messages)
    assert any("Finished in state Completed" in m for m in messages), messages[-5:]
    assert batch_row(run_id)[0] == "completed"
    assert f"flow run {run_id}: pid" in warm_log() and "ended (0)" in warm_log()


def test_a_killed_warm_run_takes_its_fork_along_and_runs_the_crash_hook(
    prefect_stack, stack_db, warm_comfyui
):
    run_id = warm_batch(prefect_stack, warm_comfyui, hang=True)
    processes = flow_run_processes(run_id)  # the client the worker started (the fork
    assert processes, "the flow-run process was not found"  # keeps the warm process's env)
    for pid in processes:
        os.kill(pid, signal.SIGKILL)
    crashed = prefect_stack.wait_final(run_id)
    warm_comfyui.behaviour.hang = False
    assert crashed["state_type"] == "CRASHED", crashed["state"]
    wait_for("the fork killed", lambda: "its process went away, killing pid" in warm_log(), 30)
    messages = prefect_stack.wait_logs(
        [run_id], lambda found: any("Hook 'write_ending' finished" in m for m in found)
    )
    assert any("Hook 'write_ending' finished running successfully" in m for m in messages)
    status, reason, resumes = batch_row(run_id)
    assert (status, reason.split(":")[0]) == ("crashed", f"run {run_id} ended Crashed") or (
        resumes
    ), (status, reason)


def test_a_cancelled_warm_run_runs_the_cancellation_hook(prefect_stack, stack_db, warm_comfyui):
    run_id = warm_batch(prefect_stack, warm_comfyui, hang=True)
    cancel(prefect_stack, run_id)
    final = prefect_stack.wait_final(run_id)
    warm_comfyui.behaviour.hang = False
    assert final["state_type"] == "CANCELLED", final["state"]
    messages = prefect_stack.wait_logs(
        [run_id], lambda found: any("Hook 'write_ending' finished" in m for m in found)
    )
    assert any("Hook 'write_ending' finished running successfully" in m for m in messages), (
        messages[-10:]
    )
    assert batch_row(run_id)[0] == "cancelled"
