"""Tokenise training examples into a :class:`BiEncoderBatch` of length-sorted text chunks, each padded on its own."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mdr.data.corpus import docid_key, encoded_text
from mdr.data.schema import Passage, TrainingExample


def passage_text(passage: Passage, prefix: str = "") -> str:
    """The string a passage is encoded as: ``prefix + title + " " + text`` (no title: just the text)."""
    return encoded_text(passage.title, passage.text, prefix)


def docid_hash(docid: str) -> int:
    """A stable 63-bit integer for a docid (same on every process and run), to compare docids as tensors."""
    return docid_key(docid) >> 1


@dataclass(frozen=True)
class PackedTexts:
    """N tokenised texts as length-sorted chunks, each padded to its own longest text."""

    chunks: list[dict[str, torch.Tensor]]  # model inputs, chunk c of shape (n_c, len_c)
    order: torch.Tensor  # (N,) the original position of each row of the concatenated chunk outputs
    real_tokens: int  # non-padding tokens over all chunks

    def __len__(self) -> int:
        return int(self.order.shape[0])

    @property
    def padded_tokens(self) -> int:
        """Tokens the encoder processes, padding included."""
        return sum(int(chunk["input_ids"].numel()) for chunk in self.chunks)

    def unpack(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-chunk outputs (n_c, dim) and return them in the original order, (N, dim)."""
        stacked = torch.cat(list(outputs), dim=0)  # (N, dim) in sorted order
        return stacked[torch.argsort(self.order).to(stacked.device)]  # (N, dim) in the original order

    def to(self, device: torch.device | str) -> PackedTexts:
        """A copy with every tensor on ``device``."""
        chunks = [{key: value.to(device, non_blocking=True) for key, value in chunk.items()} for chunk in self.chunks]
        return PackedTexts(chunks, self.order, self.real_tokens)


def token_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Each text's token ids, truncated at ``max_length``, special tokens included: (len_i,) int32 per text."""
    encoded = tokenizer(
        list(texts), truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=False
    )
    return [np.asarray(ids, dtype=np.int32) for ids in encoded["input_ids"]]


def pack_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    chunk_size: int | None = None,
    chunk_tokens: int = 4096,
) -> PackedTexts:
    """Tokenise ``texts`` (truncated at ``max_length``) into length-sorted, individually padded chunks."""
    return pack_ids(tokenizer, token_ids(tokenizer, texts, max_length), chunk_size, chunk_tokens)


def pack_ids(
    tokenizer: PreTrainedTokenizerBase,
    ids: Sequence[np.ndarray],
    chunk_size: int | None = None,
    chunk_tokens: int = 4096,
) -> PackedTexts:
    """Token ids of N texts as length-sorted chunks of ``chunk_size`` texts (None: a chunk grows while texts x its
    longest length stays within ``chunk_tokens``), each padded to its own longest text."""
    lengths = [len(row) for row in ids]
    order = sorted(range(len(ids)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for index in order:
        size = len(groups[-1]) if groups else 0
        fits = size < chunk_size if chunk_size is not None else (size + 1) * lengths[index] <= chunk_tokens
        if groups and fits:
            groups[-1].append(index)
        else:
            groups.append([index])
    left = tokenizer.padding_side == "left"
    with_types = "token_type_ids" in tokenizer.model_input_names
    chunks = []
    for group in groups:
        width = max(lengths[i] for i in group)
        input_ids = np.full((len(group), width), tokenizer.pad_token_id or 0, dtype=np.int64)  # (n_c, len_c)
        mask = np.zeros((len(group), width), dtype=np.int64)  # (n_c, len_c)
        for row, index in enumerate(group):  # on the side the tokenizer pads
            span = slice(width - lengths[index], width) if left else slice(0, lengths[index])
            input_ids[row, span] = ids[index]
            mask[row, span] = 1
        chunk = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if with_types:
            chunk["token_type_ids"] = torch.zeros_like(chunk["input_ids"])  # (n_c, len_c): one segment
        chunks.append(chunk)
    return PackedTexts(chunks, torch.tensor(order, dtype=torch.long), sum(lengths))


class TokenCache:
    """Passage token ids by docid, the ``size`` most recently used kept (~640 bytes per 100-token passage)."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"train.token_cache must be >= 0 (0: no cache), got {size}")
        self.size = size
        self._ids: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def lookup(self, docids: Sequence[str], tokenize: Callable[[list[str]], list[np.ndarray]]) -> list[np.ndarray]:
        """Token ids of each docid; ``tokenize`` is called once, with the docids not cached (each once)."""
        found: dict[str, np.ndarray] = {}
        for docid in docids:
            if docid not in found and docid in self._ids:
                self._ids.move_to_end(docid)
                found[docid] = self._ids[docid]
        missing = list(dict.fromkeys(docid for docid in docids if docid not in found))
        if missing:
            for docid, ids in zip(missing, tokenize(missing), strict=True):
                found[docid] = ids
                if self.size > 0:
                    self._ids[docid] = ids
            while len(self._ids) > self.size:
                self._ids.popitem(last=False)
        return [found[docid] for docid in docids]


@dataclass(frozen=True)
class BiEncoderBatch:
    """One training batch: Q queries with 1 + k passages each, docids compared as :func:`docid_hash` values."""

    queries: PackedTexts  # Q queries
    passages: PackedTexts  # Q * (1 + k), query i's positive at position i * (1 + k)
    group_size: int  # 1 + k
    passage_ids: torch.Tensor  # (Q * (1 + k),) each passage's docid hash
    positive_ids: torch.Tensor  # (Q, P) the docid hashes of each query's judged positives, padded with -1

    @property
    def num_queries(self) -> int:
        """Q, the number of queries in the batch."""
        return len(self.queries)

    def to(self, device: torch.device | str) -> BiEncoderBatch:
        """A copy with every tensor on ``device``."""
        moved = (self.queries, self.passages, self.passage_ids, self.positive_ids)
        queries, passages, passage_ids, positive_ids = (item.to(device) for item in moved)
        return BiEncoderBatch(queries, passages, self.group_size, passage_ids, positive_ids)


class BiEncoderCollator:
    """Turns examples into a :class:`BiEncoderBatch` chunked by :func:`pack_ids` (``token_cache``: passages kept)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        corpus: Mapping[str, Passage],
        query_max_length: int,
        passage_max_length: int,
        query_prefix: str = "",
        passage_prefix: str = "",
        chunk_size: int | None = None,
        chunk_tokens: int = 4096,
        token_cache: int = 0,
    ) -> None:
        self.tokenizer, self.corpus = tokenizer, corpus
        self.query_max_length, self.passage_max_length = query_max_length, passage_max_length
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self.chunk_size, self.chunk_tokens = chunk_size, chunk_tokens
        self.token_cache = TokenCache(token_cache)

    def _passage_ids(self, docids: list[str]) -> list[np.ndarray]:
        texts = [passage_text(self.corpus[docid], self.passage_prefix) for docid in docids]
        return token_ids(self.tokenizer, texts, self.passage_max_length)

    def __call__(self, examples: Sequence[TrainingExample]) -> BiEncoderBatch:
        group_sizes = {1 + len(example.negatives) for example in examples}
        if len(group_sizes) != 1:
            raise ValueError(f"examples in one batch must have the same number of negatives, got {group_sizes}")
        docids = [docid for example in examples for docid in (example.positive, *example.negatives)]
        queries = [self.query_prefix + example.query for example in examples]
        positives = [example.positives or (example.positive,) for example in examples]
        positive_ids = torch.full((len(examples), max(map(len, positives))), -1, dtype=torch.long)  # (Q, P)
        for row, judged in enumerate(positives):
            positive_ids[row, : len(judged)] = torch.tensor([docid_hash(d) for d in judged], dtype=torch.long)
        passages = self.token_cache.lookup(docids, self._passage_ids)
        return BiEncoderBatch(
            queries=pack_texts(self.tokenizer, queries, self.query_max_length, self.chunk_size, self.chunk_tokens),
            passages=pack_ids(self.tokenizer, passages, self.chunk_size, self.chunk_tokens),
            group_size=group_sizes.pop(),
            passage_ids=torch.tensor([docid_hash(d) for d in docids], dtype=torch.long),  # (Q * (1 + k),)
            positive_ids=positive_ids,
        )
