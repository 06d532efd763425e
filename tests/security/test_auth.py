"""Issue 15, finding 1 (and the auth parts of 6): only credential holders act on or read
from `studio server`, and everything the project runs works with the credential.

One real `studio server` for the module (tests/security/conftest.py: the auth string it
generated, CSRF on, the UI on), a real process worker where a run must complete, the
real `studio`/`prefect` commands in subprocesses as an operator types them.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cli.server import ui_origin
from tests.emulators.comfyui import ComfyUIEmulator
from tests.prefect_server.readme_block import Walkthrough, on_prefect_lines
from tests.security.conftest import BIN, ROOT, SecuredServer, base_env, basic, free_port

SECRET = "db-password-s3cr3t-value"  # a block's secret the attacker wants


@pytest.fixture(scope="module")
def loot(secured_server: SecuredServer) -> dict[str, str]:
    """What an attacker came for: a deployment to run, a Secret block, an artifact with a
    link, a log line; created with the credential."""
    with secured_server.http() as api:
        flow = api.post("/flows/", json={"name": f"loot-{uuid.uuid4().hex[:6]}"})
        flow.raise_for_status()
        deployment = api.post(
            "/deployments/", json={"name": "loot", "flow_id": flow.json()["id"]}
        )
        deployment.raise_for_status()
        from prefect.blocks.system import Secret
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: secured_server.api_url,
                                 PREFECT_API_AUTH_STRING: secured_server.auth_string}):
            Secret(value=SECRET).save("studio-database-password", overwrite=True)
        artifact = api.post("/artifacts/", json={
            "key": "content-batch-loot", "type": "markdown",
            "data": "https://bucket.example/capa3.png?X-Amz-Signature=presigned",
        })
        artifact.raise_for_status()
        logged = api.post("/logs/", json=[{
            "name": "studio", "level": 20, "message": "loot log line",
            "timestamp": datetime.now(UTC).isoformat(),
        }])
        logged.raise_for_status()
        return {
            "deployment": deployment.json()["id"],
            "artifact": artifact.json()["id"],
        }


def test_the_server_keeps_its_generated_credential_private(secured_server) -> None:
    assert secured_server.auth_file.stat().st_mode & 0o777 == 0o600
    assert len(secured_server.auth_string) >= 40
    printed = secured_server.log.read_text(errors="replace")
    assert secured_server.auth_string not in printed  # how to read it, never the value
    assert f"export PREFECT_API_AUTH_STRING=\"$(cat {secured_server.auth_file})\"" in printed
    assert f"export PREFECT_API_URL={secured_server.api_url}" in printed


def test_requests_without_the_credential_are_refused(secured_server, loot) -> None:
    deployment = loot["deployment"]
    reads = [
        ("POST", "/block_documents/filter", {"include_secrets": True}),
        ("POST", "/artifacts/filter", {}),
        ("POST", "/logs/filter", {}),
        ("POST", "/flow_runs/filter", {}),
        ("POST", f"/deployments/{deployment}/create_flow_run", {"parameters": {}}),
    ]
    with secured_server.http() as api:
        # a valid CSRF token, as a browser session of a logged-in user would hold: still
        # no credential, so the auth check (behind the CSRF check) answers
        token_headers = {k: api.headers[k] for k in ("Prefect-Csrf-Token", "Prefect-Csrf-Client")}
        runs_before = len(api.post("/flow_runs/filter", json={}).json())
    with secured_server.anonymous() as anonymous:
        for method, path, body in reads:
            bare = anonymous.request(method, path, json=body)
            assert bare.status_code == 403, (path, bare.text)  # no CSRF token
            with_token = anonymous.request(method, path, json=body, headers=token_headers)
            assert with_token.status_code == 401, (path, with_token.text)
            wrong = anonymous.request(method, path, json=body, headers=token_headers,
                                      auth=basic("studio:guessed"))
            assert wrong.status_code == 401, (path, wrong.text)
            assert SECRET not in bare.text + with_token.text + wrong.text
        for path in (f"/artifacts/{loot['artifact']}", f"/deployments/{deployment}",
                     "/block_documents/?include_secrets=true", "/csrf-token?client=x",
                     "/admin/settings"):
            assert anonymous.get(path).status_code == 401, path
        assert anonymous.get("/health").status_code == 200  # probes stay open
    with secured_server.http() as api:
        assert len(api.post("/flow_runs/filter", json={}).json()) == runs_before
        found = api.post("/block_documents/filter", json={"include_secrets": True})
        assert SECRET in found.text  # the credential holder still reads it


def test_cors_answers_only_the_uis_own_origin(secured_server) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with secured_server.anonymous() as anonymous:
        evil = anonymous.options("/flow_runs/filter",
                                 headers={"Origin": "http://evil.example", **preflight})
        assert evil.status_code == 400
        assert "access-control-allow-origin" not in evil.headers
        simple = anonymous.get("/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in simple.headers
        own = anonymous.options("/flow_runs/filter",
                                headers={"Origin": secured_server.ui_url, **preflight})
        assert own.status_code == 200
        assert own.headers["access-control-allow-origin"] == secured_server.ui_url


def test_the_ui_asks_for_the_credential(secured_server) -> None:
    settings = httpx.get(f"{secured_server.ui_url}/ui-settings", timeout=30)
    assert settings.status_code == 200
    assert settings.json()["auth"] == "BASIC" and settings.json()["csrf_enabled"] is True
    page = httpx.get(f"{secured_server.ui_url}/", timeout=30, follow_redirects=True)
    assert page.status_code == 200 and "<html" in page.text.lower()


def _studio_server(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "studio"), "server", "--port", str(free_port()), *args],
        cwd=ROOT, env={**base_env(), **env}, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_a_non_loopback_host_without_a_credential_is_refused(tmp_path: Path) -> None:
    home = str(tmp_path / "prefect")
    for refused in (
        _studio_server("--host", "0.0.0.0", "--no-auth", PREFECT_HOME=home),
        _studio_server("--host", "0.0.0.0", PREFECT_HOME=home,
                       PREFECT_SERVER_API_AUTH_STRING=""),
    ):
        assert refused.returncode == 2, refused.stdout + refused.stderr
        said = " ".join((refused.stdout + refused.stderr).split())
        assert "0.0.0.0" in said and "--insecure" in said and "credential" in said
        assert "Traceback" not in said and "PREFECT" not in refused.stdout.split("Usage")[0]


def test_insecure_lets_no_auth_through_and_a_named_host_is_not_loopback(monkeypatch,
                                                                          tmp_path) -> None:
    """The decision itself (starting a server on 0.0.0.0 here would expose it)."""
    import typer

    from cli.server import is_loopback, secure_environment

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    env, auth, how = secure_environment({}, "0.0.0.0", 4200, no_auth=True, insecure=True)
    assert auth is None and how == "" and "PREFECT_SERVER_API_AUTH_STRING" not in env
    with pytest.raises(typer.BadParameter):
        secure_environment({}, "studio.example", 4200, no_auth=True, insecure=False)
    env, auth, how = secure_environment({}, "127.0.0.1", 4200, no_auth=True, insecure=False)
    assert auth is None  # loopback: allowed, loudly
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.2")
            ] == [True, True, True, False, False]
    env, auth, how = secure_environment({}, "0.0.0.0", 4200, no_auth=False, insecure=False)
    assert auth and env["PREFECT_SERVER_API_AUTH_STRING"] == auth
    assert (tmp_path / "studio-api-auth-string").read_text().strip() == auth
    assert env["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "true"
    assert env["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] == ui_origin("0.0.0.0", 4200, {})
    again = secure_environment({}, "0.0.0.0", 4200, no_auth=False, insecure=False)[1]
    assert again == auth  # generated once, kept
    operator = {"PREFECT_SERVER_CORS_ALLOWED_ORIGINS": "https://ui.example",
                "PREFECT_SERVER_API_AUTH_STRING": "ops:chosen", "PREFECT_API_AUTH_STRING": "x"}
    env, auth, how = secure_environment(operator, "0.0.0.0", 4200, no_auth=False,
                                        insecure=False)
    assert auth == "ops:chosen" and env["PREFECT_API_AUTH_STRING"] == "ops:chosen"
    assert how == '"$PREFECT_SERVER_API_AUTH_STRING"'  # how to read it, not the value
    assert "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS" not in env  # the operator's name wins


COMMANDS = {
    "batch submit": ("studio", "batch", "submit", "--avatar", "demo", "--pieces", "1"),
    "batch status": ("studio", "batch", "status", str(uuid.uuid4())),
    "limits apply": ("studio", "limits", "apply"),
    "automations apply": ("studio", "automations", "apply"),
}


@pytest.fixture(scope="module")
def demo_avatar(secured_server) -> str:
    """The avatar `make demo` creates, in the workers' database."""
    added = secured_server.run(
        "studio", "avatar", "add", "demo", "--niche", "fitness",
        "--lora", "https://example.com/loras/demo-avatar.safetensors",
    )
    assert added.returncode == 0 or "exists" in added.stdout + added.stderr, added.stderr
    return "demo"


@pytest.mark.parametrize("credential", ["missing", "wrong"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_missing_or_wrong_credential_is_one_line_and_exit_1(
    secured_server, demo_avatar, command, credential
) -> None:
    env = dict(secured_server.client_env)
    if credential == "missing":
        env.pop("PREFECT_API_AUTH_STRING")
    else:
        env["PREFECT_API_AUTH_STRING"] = "studio:not-the-one"
    done = secured_server.run(*COMMANDS[command], env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "PREFECT_API_AUTH_STRING" in lines[0] and secured_server.api_url in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert "not-the-one" not in done.stdout + done.stderr


@pytest.fixture
def readme_comfyui():
    """The ComfyUI the block's COMFYUI_ENDPOINT line is pointed at, for the whole test."""
    with ComfyUIEmulator() as comfyui:
        yield comfyui


def test_the_readme_on_prefect_commands_run_with_the_credential(
    secured_server, demo_avatar, s3_server, readme_comfyui
) -> None:
    """Every line of the block, as written, with only the port, PREFECT_HOME, the
    database's and the ComfyUI emulator's URLs put in (tests/prefect_server/
    readme_block.py): the server line is the one the fixture ran; the worker runs the
    submitted batch, the crash recovery and the health check to completion. The worker
    stores into an S3 server shaped like R2 (a public content bucket, a private one):
    after the batch, of every object in either bucket only the published capa1 pieces
    answer an anonymous GET."""
    from tests.storage.conftest import r2_env

    lines = on_prefect_lines()
    s3_server.start()
    public = s3_server.new_bucket("content", public=True)
    private = s3_server.new_bucket("private")
    env = {k: v for k, v in secured_server.client_env.items()
           if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    env.update(r2_env(s3_server, public, private))

    def started_by_the_fixture(line: str, _env: dict[str, str]) -> None:
        assert line.startswith(".venv/bin/studio server"), line  # + --port

    def start_worker(line: str, worker_env: dict[str, str]) -> None:
        secured_server.start("worker", ["bash", "-c", f"exec {line}"], env=worker_env)

    def completed(run: str) -> None:
        final = secured_server.wait_final(run)
        assert final["state_type"] == "COMPLETED", final["state"]

    walk = Walkthrough(env=env, database_url=secured_server.database_url,
                       port=secured_server.port, comfyui_url=readme_comfyui.url,
                       start_server=started_by_the_fixture, start_worker=start_worker,
                       wait_submitted=completed, prefect_home=secured_server.home)
    run_id = walk.run(lines)
    status = next(out for line, out in walk.outputs.items() if "batch status" in line)
    assert "state: Completed" in status.stdout, status.stdout
    assert env["PREFECT_API_AUTH_STRING"] == secured_server.auth_string
    assert run_id is not None

    # the scheduled maintenance flows run by the worker with the same credential
    started = []
    for deployment in ("crash-recovery/crash-recovery", "health-check/health"):
        done = subprocess.run([str(BIN / "prefect"), "deployment", "run", deployment],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        started.append(re.search(r"UUID: ([0-9a-f-]{36})", done.stdout)[1])
    for flow_run in started:
        final = secured_server.wait_final(flow_run)
        assert final["state_type"] == "COMPLETED", final["state"]
    with secured_server.http() as api:
        pool = api.get("/work_pools/studio-pool").json()
        assert pool["concurrency_limit"] == 6
        limits = {x["name"] for x in api.post("/v2/concurrency_limits/filter", json={}).json()}
        assert {"provider:comfyui", "provider:modal", "provider:replicate"} <= limits
        automations = api.post("/automations/filter", json={}).json()
        assert any(a["name"].startswith("studio") for a in automations)
        logs = api.post("/logs/filter", json={
            "logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}).json()
        assert any("[BATCH COMPLETE]" in entry["message"] for entry in logs)  # run logs sent
    assert_only_published_capa1_is_public(secured_server, s3_server, public, private)


def assert_only_published_capa1_is_public(
    server: SecuredServer, s3_server, public: str, private: str
) -> None:
    """Anonymous GETs of every object of both buckets: 200 only for published capa1."""
    from sqlalchemy import create_engine, text

    engine = create_engine(server.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT storage_key, access_tier, status FROM content_piece")
            ).all()
    finally:
        engine.dispose()
    tiers = {tier for _key, tier, _status in rows}
    assert {"capa1", "capa2", "capa3"} <= tiers, rows  # the 10-piece on-demand mix: 6/3/1
    open_keys = {key for key, tier, status in rows if tier == "capa1" and status == "published"}
    assert open_keys
    answered = {}
    for bucket in (public, private):
        pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            for obj in page.get("Contents", []):
                url = f"{s3_server.endpoint_url}/{bucket}/{obj['Key']}"
                answered[(bucket, obj["Key"])] = httpx.get(url).status_code
    readable = {key for (bucket, key), status in answered.items() if status == 200}
    assert readable == open_keys, answered
    assert all(bucket == public for (bucket, key), status in answered.items() if status == 200)
    premium = {key for key, tier, _status in rows if tier != "capa1" and key}
    assert premium and premium <= {key for (bucket, key) in answered if bucket == private}
    assert not any(key.startswith("staging/") for (_bucket, key) in answered)  # swept


def call(api: httpx.Client, method: str, path: str, ok: tuple[int, ...] = (200, 201),
         **kwargs) -> httpx.Response:
    """One request, retried on 503 as Prefect's own client does (SQLite busy)."""
    for _ in range(10):
        answer = api.request(method, path, **kwargs)
        if answer.status_code != 503:
            break
        time.sleep(0.5)
    assert answer.status_code in ok, f"{method} {path}: {answer.status_code} {answer.text}"
    return answer


def test_the_reconcile_beside_the_server_frees_a_leaked_slot(tmp_path, postgres_url) -> None:
    """On a server that keeps leases in memory (an operator's choice; `studio server`'s
    default is filesystem leases, which need no reconcile), a slot counted with no lease
    and no census row (a leak) is freed by the reconcile that `studio server` then runs
    with its own credential (every 2 s here)."""
    from tests.security.conftest import start_secured_server

    memory = "prefect.server.concurrency.lease_storage.memory"
    with start_secured_server(tmp_path / "memory-leases", postgres_url,
                              PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=memory) as server:
        _leak_and_wait_for_the_reconcile(server)


def _leak_and_wait_for_the_reconcile(secured_server) -> None:  # type: ignore[no-untyped-def]
    name = "provider:comfyui"
    with secured_server.http() as api:
        if call(api, "GET", f"/v2/concurrency_limits/{name}", ok=(200, 404)).status_code == 404:
            call(api, "POST", "/v2/concurrency_limits/", json={"name": name, "limit": 10})
        call(api, "POST", "/v2/concurrency_limits/increment",
             json={"names": [name], "slots": 3, "mode": "concurrency"})
        deadline = time.monotonic() + 30
        while (held := call(api, "GET", f"/v2/concurrency_limits/{name}").json()[
                "active_slots"]) > 0:
            assert time.monotonic() < deadline, f"{held} slots still counted"
            time.sleep(0.5)
    log = secured_server.log.read_text(errors="replace")
    app_log = secured_server.root / "studio" / "logs" / "app.log"
    if app_log.exists():
        log += app_log.read_text(errors="replace")
    assert "Freed 3 slot(s) of provider:comfyui" in log
    assert "slot reconcile failed" not in log


async def test_a_refused_reconcile_round_is_a_warning_naming_the_setting(
    secured_server, caplog
) -> None:
    """Finding 6: with a wrong credential every round fails, logged at WARNING (it was
    DEBUG, and a leaked slot stayed counted unseen), naming PREFECT_API_AUTH_STRING."""
    import asyncio
    import logging

    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from engine.lease_census import LeaseCensus
    from engine.slot_reconcile import reconcile_forever

    caplog.set_level(logging.DEBUG, logger="studio.providers")
    with temporary_settings({PREFECT_API_URL: secured_server.api_url,
                             PREFECT_API_AUTH_STRING: "studio:not-the-one"}):
        loop = asyncio.create_task(reconcile_forever(LeaseCensus(), every=0.2))
        await asyncio.sleep(1.5)
        loop.cancel()
    refused = [r for r in caplog.records if r.name == "studio.providers"]
    assert refused and all(r.levelno == logging.WARNING for r in refused)
    message = refused[0].getMessage()
    assert "401" in message and "PREFECT_API_AUTH_STRING" in message
    assert "not-the-one" not in caplog.text
