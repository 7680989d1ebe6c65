"""Item text -> token ids: a WordPiece tokenizer (the `tokenizers` package) trained offline on the
item texts of the data set, and each item's ids padded to `max_tokens`.

Training is ours and deterministic: the `tokenizers` WordPiece/BPE trainers break ties between equally
frequent merges by hash-map order, so two trainings on the same ml-100k texts gave different
vocabularies (measured: 16 of 2,000 tokens differed), which would make the cache irreproducible. The
vocabulary here is [PAD], [UNK], every character seen (as a word start and as a "##" continuation),
then whole words by descending count (ties by the word), up to `vocab_size`; words outside it are
split by WordPiece's greedy longest match into known pieces (at worst characters), so [UNK] is rare.

Ids: 0 = [PAD], 1 = [UNK]; row 0 of `token_ids` (the padding item) and items without text are all 0
(length 0). Normalisation: lowercase, accents stripped (BERT normaliser); pre-tokenisation on
whitespace and punctuation. The tokenizer's JSON is stored with the tokens in the HDF5 cache so the
exact tokenisation can be reproduced.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from hybridrec.errors import ConfigError

PAD, UNK = "[PAD]", "[UNK]"


@dataclass
class ItemTokens:
    token_ids: np.ndarray  # int32 (num_items + 1, max_tokens), 0-padded on the right
    lengths: np.ndarray  # int32 (num_items + 1,)
    vocab_size: int
    tokenizer_json: str

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_str(self.tokenizer_json)


def _empty_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(cleanup=False)  # decode = the words joined by spaces
    return tokenizer


def word_counts(texts: list[str]) -> Counter[str]:
    """Counts of the normalised, pre-tokenised words of `texts` (the units the tokenizer sees)."""
    probe = _empty_tokenizer({PAD: 0, UNK: 1})
    counts: Counter[str] = Counter()
    for text in texts:
        if text:
            normal = probe.normalizer.normalize_str(text)
            counts.update(word for word, _ in probe.pre_tokenizer.pre_tokenize_str(normal))
    return counts


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """A WordPiece tokenizer for `texts` with at most `vocab_size` tokens ([PAD]=0, [UNK]=1); deterministic."""
    counts = word_counts(texts)
    chars = sorted({ch for word in counts for ch in word})
    base = [PAD, UNK] + chars + [f"##{ch}" for ch in chars]
    if vocab_size < len(base):
        raise ConfigError("data.text_vocab_size", vocab_size,
                          f">= {len(base)} (2 special tokens + {len(chars)} characters, with and without ##)")
    known = set(base)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in known]
    tokens = base + words[: vocab_size - len(base)]
    return _empty_tokenizer({token: i for i, token in enumerate(tokens)})


def encode_items(tokenizer: Tokenizer, texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(token_ids (len(texts) + 1, max_tokens) int32, lengths) for items 1..len(texts); row 0 = padding."""
    if max_tokens < 1:
        raise ConfigError("data.text_max_tokens", max_tokens, "an integer >= 1")
    ids = np.zeros((len(texts) + 1, max_tokens), dtype=np.int32)
    lengths = np.zeros(len(texts) + 1, dtype=np.int32)
    for row, encoding in enumerate(tokenizer.encode_batch(texts), start=1):
        tokens = encoding.ids[:max_tokens]
        ids[row, : len(tokens)] = tokens
        lengths[row] = len(tokens)
    return ids, lengths


def build_item_tokens(texts: list[str], vocab_size: int, max_tokens: int) -> ItemTokens:
    tokenizer = train_tokenizer(texts, vocab_size)
    ids, lengths = encode_items(tokenizer, texts, max_tokens)
    return ItemTokens(ids, lengths, tokenizer.get_vocab_size(), tokenizer.to_str())
