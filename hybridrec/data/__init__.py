"""Data layer: raw readers (formats/), dedupe + k-core (kcore), leave-one-out (split), synthetic
generator, fixed negatives, HDF5 cache, and training/eval batches (batches). Entry point:
`load_processed(cfg: DataConfig) -> ProcessedData` (see docs/ARCHITECTURE.md, Data)."""

from hybridrec.data.processed import SOURCES, ProcessedData, load_processed, process

__all__ = ["SOURCES", "ProcessedData", "load_processed", "process"]
