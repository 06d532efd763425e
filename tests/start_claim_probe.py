"""Run as `__main__` by tests/faults/test_start_claim.py through the flow-run process: says
how many claims another process sees in the image provider's queue as its first line runs."""

from engine.lease_census import LeaseCensus

seen = LeaseCensus(holder="probe-other:1").queue("comfyui", None)
print(f"claims seen at start: {len(seen)}", flush=True)
