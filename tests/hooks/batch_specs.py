"""Planned pieces for hook and safety tests: mixed tiers, categories and templates."""

from __future__ import annotations

from studio.types import PieceSpec


def make_specs(
    n: int, batch_id: str = "b1", prompt: str = "studio portrait, soft light"
) -> list[PieceSpec]:
    categories = ["fitness", "lifestyle", "fashion", "travel"]
    return [
        PieceSpec(
            piece_id=f"{batch_id}-p{i:03d}",
            batch_id=batch_id,
            index=i,
            prompt=f"{prompt}, variation {i}",
            tier="capa1" if i % 3 else "capa2",
            template_id=f"tpl-{i % 8}",
            category=categories[i % len(categories)],
            hook_pattern="Day {n} with {name}" if i % 5 == 0 else None,
        )
        for i in range(n)
    ]
