"""Schema of the `data/` config group: which data set, where, and how it is filtered and split."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    # synthetic | ml100k | amazon2014 | amazon2018 | amazon2023
    source: str = "synthetic"
    # file path for amazon formats (2014: reviews json lines or ratings csv, detected from the content;
    # 2018: json lines; 2023: jsonl); gzip or plain (magic bytes). ml100k: "" = recbole's bundled file
    path: str = ""
    # synthetic generator size: tiny | paper
    synthetic_scale: str = "tiny"
    # seeds the synthetic generator and the fixed evaluation negatives
    seed: int = 0
    kcore: int = 5
    max_seq_len: int = 50
    # training examples: last (one window per user, SASRec) | all (windows over the whole train part)
    train_windows: str = "last"
    # all: a window ends every train_stride items and trains its last train_stride labels (0 = max_seq_len;
    # 1 = every prefix)
    train_stride: int = 0
    # processed data is cached here as HDF5; empty = ~/.cache/hybridrec
    cache_dir: str = ""
    # false: always rebuild (and rewrite) the cache file
    use_cache: bool = True
    num_negatives: int = 100
    # malformed input line: error (DataError naming file:line) | skip (count per reason in stats)
    on_bad_line: str = "error"
    # drop repeated (user, item) pairs, keeping the earliest
    dedupe: bool = True
    # item text (issue 10): tokenise item metadata into ProcessedData.item_tokens (cached with the data)
    item_text: bool = False
    # metadata file (amazon 2014 meta dict literals / 2018 json lines / 2023 jsonl keyed by parent_asin);
    # ml100k: "" = recbole's bundled ml-100k.item
    meta_path: str = ""
    text_max_tokens: int = 32
    text_vocab_size: int = 4000
