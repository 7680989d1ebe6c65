"""The full item embedding of a checkpoint written with the 2D table (one process, no collectives).

`checkpoint.load_full_state` reassembles megatron's parameters; the 2D table's rows sit in each rank
file's `extra["embedding_table"]` and the extra vocabulary rows (padding, pad ids) in the model as
`embedding.word_embeddings.weight`. `full_word_embedding(ckpt)` puts them back into the (vocab, h)
word embedding of the unsharded model, from the ranks of the first sharding group (every replica
holds the same rows after a `grad` or `weights` step), so a 2D run can be evaluated or compared
like any other.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hybridrec.embedding.groups import EmbeddingGroups, RowSharding, across_tp
from hybridrec.errors import DataError

WORD_EMBEDDING_KEY = "embedding.word_embeddings.weight"


def full_word_embedding(ckpt: str | Path) -> torch.Tensor:
    """(vocab_size, h): row 0 and the pad ids from the model's extra rows, items from the table shards."""
    from hybridrec.train.checkpoint import _load_file, rank_file, read_manifest

    manifest = read_manifest(ckpt)
    first = _load_file(rank_file(ckpt, 0))
    table = first["extra"].get("embedding_table")
    if table is None:
        raise DataError(ckpt, "no 2D item table in this checkpoint (saved with embedding.enabled=false)")
    lay = table["layout"]
    tp = int(manifest.get("layout", {}).get("tp", 1))
    groups = EmbeddingGroups.build(manifest["world_size"] // tp, lay["group_size"], lay["placement"])
    sharding = RowSharding(lay["num_items"], groups.group_size, lay["row_sharding"])
    vocab = int(manifest["vocab_size"])
    # the extra rows: megatron's vocab-parallel slices on global ranks 0..tp-1 (dp rank 0), then padding
    slices = [first if r == 0 else _load_file(rank_file(ckpt, r)) for r in range(tp)]
    extra = torch.cat([f["trainer"]["model"][0][WORD_EMBEDDING_KEY] for f in slices])
    extra = extra[: vocab - lay["num_items"]]
    full = torch.empty(vocab, extra.shape[1], dtype=extra.dtype)
    full[0] = extra[0]
    full[lay["num_items"] + 1:] = extra[1:]
    for position, rank in enumerate(across_tp(groups.sharding_groups(), tp)[0]):  # tp index 0's copy
        payload = first if rank == 0 else _load_file(rank_file(ckpt, rank))
        rows = torch.from_numpy(sharding.global_rows(position))
        full[rows + 1] = payload["extra"]["embedding_table"]["weight"]
    return full
