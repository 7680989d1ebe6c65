"""Slurm host lists (pure): the one parser, with the semantics of `scontrol show hostnames`; used
for SLURM_JOB_NODELIST and for the Nodes=/Switches= fields of `scontrol show topology`."""

from __future__ import annotations

import re

from hybridrec.errors import ConfigError


def _split_top_level(text: str, field: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(field, text, "balanced [] brackets")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ConfigError(field, text, "balanced [] brackets")
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_range_list(body: str, whole: str, field: str) -> list[str]:
    out: list[str] = []
    for item in body.split(","):
        if "-" in item:
            lo, hi = item.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ConfigError(field, whole, f"numeric ranges like 1-3 (got {item!r})")
            width = len(lo)
            out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
        elif item.isdigit():
            out.append(item)
        else:
            raise ConfigError(field, whole, f"numbers inside [] (got {item!r})")
    return out


def _expand_host(pattern: str, whole: str, field: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [head + n + rest for n in _expand_range_list(match.group(1), whole, field)
            for rest in _expand_host(tail, whole, field)]


def expand_hostlist(text: str, field: str = "hostlist") -> list[str]:
    """Expand a Slurm host list exactly as `scontrol show hostnames` does: `n[1-3,5],gpu-[08-09]` ->
    n1 n2 n3 n5 gpu-08 gpu-09; several bracket groups multiply out (`r[1-2]n[1-2]` -> r1n1 r1n2 r2n1
    r2n2). `field` names the source in errors (e.g. SLURM_JOB_NODELIST)."""
    hosts = [h for part in _split_top_level(text.strip(), field) for h in _expand_host(part, text, field)]
    if not hosts:
        raise ConfigError(field, text, "a non-empty Slurm host list like 'n[1-4],m1'")
    return hosts
