"""A batch run claims its image provider's slots as its process starts (engine/start_claim.py).

The flows a worker starts together reach their own claim 0.2-0.6 s apart on a busy host,
and the first asks ~0.3 s after its claim: before this, the first of a wave sometimes
took every slot before the others had claimed (issue 20). The process now writes the
claim before the engine starts, when its deployment says it makes images.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMFYUI = {
    "COMFYUI_ENABLED": "true",
    "COMFYUI_ENDPOINT": "http://127.0.0.1:9",
    "LORA_INFERENCE_PROVIDER_ORDER": "comfyui",
}


@pytest.fixture
def comfyui_first(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in COMFYUI.items():
        monkeypatch.setenv(name, value)


def test_a_batch_process_claims_before_its_engine_and_its_flow_keeps_the_same_row(
    studio_env, comfyui_first
):
    from engine import start_claim
    from engine.lease_census import LeaseCensus
    from engine.provider_slots import CLAIM_PLACE, LeasePool

    other = LeaseCensus(holder="other-host:1")
    assert other.queue("comfyui", None) == []
    assert start_claim.claim_at_start({start_claim.FLAG: "1"}) == "comfyui"
    assert other.queue("comfyui", None) == [CLAIM_PLACE]  # counted from its first look

    async def the_flows_own_claim() -> None:  # same process: the same row, not a second
        pool = LeasePool("comfyui", 10, census=LeaseCensus())
        pool.claim(5.0)
        await asyncio.sleep(0.3)
        assert other.queue("comfyui", None) == [CLAIM_PLACE]
        pool.unclaim()
        await asyncio.sleep(0.6)
        await pool.drain()

    asyncio.run(the_flows_own_claim())
    assert other.queue("comfyui", None) == []  # the batch ended its claim: the row went


def test_no_claim_without_the_flag_a_provider_with_slots_or_claims(
    studio_env, comfyui_first, monkeypatch
):
    from engine import start_claim
    from engine.lease_census import LeaseCensus

    other = LeaseCensus(holder="other-host:1")
    assert start_claim.claim_at_start({}) is None  # health, review, ... runs
    assert start_claim.claim_at_start({start_claim.FLAG: "0"}) is None
    monkeypatch.setenv("PROVIDER_SLOT_CLAIM_SECONDS", "0")  # claims switched off
    assert start_claim.claim_at_start({start_claim.FLAG: "1"}) is None
    monkeypatch.delenv("PROVIDER_SLOT_CLAIM_SECONDS")
    monkeypatch.setenv("COMFYUI_ENABLED", "false")  # no provider: the offline preview
    monkeypatch.delenv("LORA_INFERENCE_PROVIDER_ORDER")
    assert start_claim.claim_at_start({start_claim.FLAG: "1"}) is None
    assert other.queue("comfyui", None) == []


def test_a_claim_that_fails_never_stops_the_run(studio_env, comfyui_first, monkeypatch):
    """The studio database does not answer: the run goes on (its flow's own claim and
    steps report the database)."""
    from engine import start_claim
    from engine.lease_census import LeaseCensus

    def unreachable(*_args: object) -> list[float]:
        raise ConnectionRefusedError("studio database down")

    monkeypatch.setattr(LeaseCensus, "queue", unreachable)
    assert start_claim.claim_at_start({start_claim.FLAG: "1"}) is None


def test_the_flow_run_process_claims_before_running_its_module(studio_env, comfyui_first):
    """What the worker starts (`python -m engine.flow_run_process` runs the engine through
    `run_module`) writes the claim before the module's first line."""
    code = (
        "from engine.flow_run_process import run_module\n"
        "raise SystemExit(run_module('tests.start_claim_probe'))\n"
    )
    env = {**os.environ, "STUDIO_RUN_CLAIMS_IMAGE_SLOTS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "claims seen at start: 1" in done.stdout, done.stdout + done.stderr[-3000:]


def test_the_batch_deployments_and_only_they_say_they_make_images():
    from engine.start_claim import FLAG

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    flagged = {
        d["name"] for d in config["deployments"]
        if d["work_pool"]["job_variables"]["env"].get(FLAG) == "1"
    }
    assert flagged == {"on-demand", "daily", "weekly", "monthly"}
    for deployment in config["deployments"]:  # the rest of the environment is shared
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
