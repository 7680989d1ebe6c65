"""The recommender whose item table is the 2D sparse-parallel table (`embedding.enabled=true`).

A megatron GPTModel (same decoder, positions, dropout, schedules, DDP and optimizer for the dense
part) built with the *extra* vocabulary rows only (padding id 0 and the pad ids above num_items:
`ItemVocab.extra_ids`, a few dozen rows) as its word embedding; the item rows live in the
`TrainerTable` (`hybridrec.embedding.trainer_table`), outside megatron's DDP and optimizer:

- input: a forward pre-hook on the word embedding maps ids to extra rows (items to row 0), and a
  forward hook puts the all-to-all lookup of the item ids in their place (megatron then adds
  positions, transposes and applies dropout as usual);
- output: the output layer passes the hidden states through, and `compute_language_model_loss`
  is the distributed softmax cross entropy over the embedding group (tied: the scoring weights
  are the same table rows and extra rows); without labels the model returns hidden states
  (b, s, h), which `evaluate_2d` scores shard by shard.

pp = 1 (preflight refuses pipelines). Under tp the extra rows are megatron's vocab-parallel word
embedding (padded to a multiple of tp), gathered whole for the scoring, which every tp rank computes
alike (hidden states and the table are the same on the tp ranks of a replica: its gradient is the
slice, not a sum). Initial weights equal the unsharded model's: the word embedding's full initial
tensor is cut into the table's rows and the extra rows.
"""

from __future__ import annotations

from typing import Any

import torch

from hybridrec.model import params as P

EXTRA_ROWS = "embedding.word_embeddings.extra_rows"  # global name of the dense extra-vocabulary rows


class _PassThrough(torch.nn.Module):
    """Stands in for the output layer: the scoring happens in `compute_language_model_loss`."""

    def forward(self, hidden: torch.Tensor, weight: Any = None, runtime_gather_output: Any = None):
        return hidden, None


_MODEL_CLASS: type | None = None


def model_class() -> type:
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        from megatron.core.models.gpt.gpt_model import GPTModel

        _MODEL_CLASS = _define(GPTModel)
    return _MODEL_CLASS


def _define(base: type) -> type:
    class TwoDTableGPTModel(base):  # type: ignore[misc, valid-type]
        """GPTModel whose item rows (input lookup and tied scoring) are a `TrainerTable`."""

        def __init__(self, *args: Any, table: Any, **kwargs: Any):
            super().__init__(*args, vocab_size=padded_extra_rows(table.vocab.num_extra, table.tp), **kwargs)
            object.__setattr__(self, "item_table", table)  # not a submodule: outside DDP and the optimizer
            self._ids: torch.Tensor | None = None
            words = self.embedding.word_embeddings
            words.register_forward_pre_hook(self._to_extra_rows)
            words.register_forward_hook(self._with_item_rows)
            self.output_layer = _PassThrough()

        def _to_extra_rows(self, _module: Any, args: tuple) -> tuple:
            self._ids = args[0]
            return (self.item_table.vocab.extra_index(args[0]), *args[1:])

        def _with_item_rows(self, _module: Any, _args: tuple, out: torch.Tensor) -> torch.Tensor:
            ids, self._ids = self._ids, None
            flat_ids = ids.reshape(-1)
            where = torch.nonzero(self.item_table.vocab.is_item(flat_ids)).squeeze(1)
            items = self.item_table.lookup_items(flat_ids[where]).to(out.dtype)
            return out.reshape(-1, out.shape[-1]).index_put((where,), items).reshape(out.shape)

        def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            hidden = logits.transpose(0, 1)  # the pass-through output: [s, b, h] -> [b, s, h]
            b, s, h = hidden.shape
            loss = self.item_table.loss(hidden.reshape(b * s, h), labels.reshape(-1), self.extra_rows())
            return loss.reshape(b, s)

        def extra_rows(self) -> torch.Tensor:
            """The extra vocabulary rows (num_extra, h), whole on every tp rank."""
            return whole_extra_rows(self.embedding.word_embeddings.weight, self.item_table.vocab.num_extra,
                                    self.item_table.tp)

    return TwoDTableGPTModel


def whole_extra_rows(weight: torch.Tensor, num_extra: int, tp: int) -> torch.Tensor:
    """This tp rank's slice of the extra rows -> all `num_extra` rows (padding dropped). Every tp rank
    scores alike, so the gathered rows' gradient is split back to the slices, not summed over tp."""
    if tp > 1:
        from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

        weight = gather_from_sequence_parallel_region(weight, tensor_parallel_output_grad=False)
    return weight[:num_extra]


def padded_extra_rows(num_extra: int, tp: int) -> int:
    """Rows of the dense extra table: megatron's vocab-parallel embedding splits them evenly over tp."""
    return -(-num_extra // tp) * tp


def build_chunks_2d(cfg: Any, shape: Any, tconfig: Any, device: torch.device, table: Any) -> list[torch.nn.Module]:
    """The one chunk of a pp = 1 job with the 2D table, initialised like `sasrec.build_chunks`."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    chunk = model_class()(
        config=tconfig, transformer_layer_spec=get_gpt_layer_local_spec(), max_sequence_length=shape.max_seq_len,
        pre_process=True, post_process=True, parallel_output=True, share_embeddings_and_output_weights=True,
        position_embedding_type="learned_absolute", table=table)
    tp_size, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    infos = [info if info.global_name != P.WORD_EMBEDDING else
             P.ParamInfo(info.local_name, EXTRA_ROWS, info.partition_dim, tp_size, tp_rank, info.local_shape)
             for info in P.param_infos(chunk, tp_size, tp_rank, tied_output=True)]
    P.initialize_chunk(chunk, [i for i in infos if i.global_name != EXTRA_ROWS], cfg.init_std, cfg.init_seed)
    extra = table.extra_init
    padded = torch.zeros(padded_extra_rows(extra.shape[0], tp_size), extra.shape[1], dtype=extra.dtype)
    padded[: extra.shape[0]] = extra  # pad rows: never looked up, never scored
    with torch.no_grad():
        chunk.embedding.word_embeddings.weight.copy_(padded.chunk(tp_size)[tp_rank])
    chunk.to(device)
    chunk.hybridrec_param_infos = infos  # type: ignore[attr-defined]
    return [chunk]
