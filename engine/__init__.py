"""What works around Prefect, behind one door (see engine/WORKAROUNDS.md).

Each module here does what Prefect should do but does not yet, names the upstream issue,
and can be deleted when upstream catches up. `tasks/` (the steps) and `flows/` use it;
`studio/` (the domain) never imports it.
"""
