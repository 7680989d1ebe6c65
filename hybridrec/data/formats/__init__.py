"""Raw interaction readers, one module per format family, and the `source` -> reader registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hybridrec.data.formats import amazon2014, amazon2018, amazon2023, movielens
from hybridrec.data.formats._lines import BAD_LINE_POLICIES, RawInteractions

Reader = Callable[[str | Path, str], RawInteractions]

READERS: dict[str, Reader] = {
    "amazon2014": amazon2014.read,
    "amazon2018": amazon2018.read,
    "amazon2023": amazon2023.read,
    "ml100k": movielens.read,
}

__all__ = ["BAD_LINE_POLICIES", "READERS", "RawInteractions", "Reader"]
