"""What `data.on_bad_line=skip` skipped, for people: counts per reason (`summary.json` `data.skipped`) and
one console line naming the file and a first example. Pure: reads `ProcessedData.stats` only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def skipped_counts(stats: Mapping[str, Any]) -> dict[str, int]:
    """{reason: lines skipped} of the interaction file, plus `metadata/<reason>` for the item metadata
    file; {} when nothing was skipped (or the data is synthetic)."""
    counts = {str(k): int(v) for k, v in (stats.get("skipped") or {}).items() if v}
    meta = stats.get("metadata") or {}
    counts.update({f"metadata/{k}": int(v) for k, v in (meta.get("skipped") or {}).items() if v})
    return counts


def skip_message(stats: Mapping[str, Any]) -> str | None:
    """`data: skipped 3 of 120 lines of <file> (bad_fields 2, bad_timestamp 1), e.g. <file>:7: <reason>`,
    one such sentence per file; None when nothing was skipped."""
    parts = []
    for where in (stats, stats.get("metadata") or {}):
        counts = {k: int(v) for k, v in (where.get("skipped") or {}).items() if v}
        if not counts:
            continue
        total = sum(counts.values())
        of = f" of {where['lines']}" if where.get("lines") else ""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        example = (where.get("skipped_examples") or [""])[0]
        parts.append(f"skipped {total}{of} lines of {where.get('path', 'the data file')} ({reasons})"
                     + (f", e.g. {example}" if example else ""))
    return "data: " + "; ".join(parts) if parts else None
