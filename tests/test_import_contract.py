"""The import contract of ARCHITECTURE.md, checked on every run of the suite.

Dependencies point one way: cli -> flows -> tasks -> studio, flows/tasks -> engine,
blocks -> studio. `studio` (the domain) imports none of prefect, engine or cli, so it
can be read and tested without an orchestrator; `engine` (the Prefect workarounds) is
used by the steps and flows and uses none of them, so each workaround can be deleted
without touching them; nothing but the command line imports `cli`.

WHY a test and not import-linter: the rules are a handful of top-level names and the
ast walk below sees imports inside functions too (most of this project's imports of
Prefect are deferred for start-up time), which is where a violation would hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("studio", "engine", "tasks", "flows", "deployments", "blocks", "cli")

#: package -> top-level names it must never import
FORBIDDEN: dict[str, set[str]] = {
    "studio": {"prefect", "engine", "cli", "flows", "tasks", "deployments", "blocks"},
    "engine": {"cli", "flows", "tasks", "deployments"},
    "tasks": {"cli", "flows", "deployments"},
    "blocks": {"cli", "flows", "tasks", "engine", "deployments"},
    "flows": {"cli"},
    "deployments": {"cli"},
}


def imported_top_levels(path: Path) -> set[str]:
    """Every top-level module a file imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "versions" not in p.parts)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    broken = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & FORBIDDEN[package])
        for path in sources(package)
    }
    assert {f: names for f, names in broken.items() if names} == {}


def test_package_dependencies_have_no_cycle() -> None:
    """The graph of which package imports which (ours only) is acyclic."""
    graph = {
        package: {
            name
            for path in sources(package)
            for name in imported_top_levels(path)
            if name in PACKAGES and name != package
        }
        for package in PACKAGES
    }
    seen: set[str] = set()

    def visit(package: str, path: tuple[str, ...]) -> None:
        assert package not in path, " -> ".join((*path, package))
        if package in seen:
            return
        for used in sorted(graph[package]):
            visit(used, (*path, package))
        seen.add(package)

    for package in PACKAGES:
        visit(package, ())


def test_the_contract_sees_a_deferred_import(tmp_path: Path) -> None:
    """A violation inside a function is found too (the check can fail)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from prefect import flow\n    import engine.x\n")
    assert imported_top_levels(module) == {"prefect", "engine"}
