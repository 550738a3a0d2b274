"""Who answers for each stage's assets (shown as owners in the Dagster UI): one team tag per asset group."""

from __future__ import annotations

OWNERS_BY_GROUP: dict[str, tuple[str, ...]] = {
    "data": ("team:data-engineering",),
    "members": ("team:ml-platform",),
    "ensemble": ("team:ml-platform",),
    "governance": ("team:model-risk",),
    "monitoring": ("team:ml-operations",),
}


def owners(group: str) -> list[str]:
    """The owners of the assets of `group` (Dagster's `owners=`: team tags)."""
    return list(OWNERS_BY_GROUP[group])
