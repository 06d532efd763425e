"""A module nothing imports but a test's run (tests/faults/test_warm_runs.py): the warm
process learns it from that run."""
