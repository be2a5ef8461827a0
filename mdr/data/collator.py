"""Tokenise training examples into a :class:`BiEncoderBatch` (passages laid out per query as [pos, negs...])."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from mdr.data.schema import Passage, TrainingExample


def passage_text(passage: Passage, prefix: str = "") -> str:
    """The string a passage is encoded as: ``prefix + title + " " + text`` (no title: just the text)."""
    body = f"{passage.title} {passage.text}" if passage.title else passage.text
    return prefix + body


@dataclass(frozen=True)
class BiEncoderBatch:
    """One training batch.

    Attributes:
        query_inputs: tokenised queries, Q rows.
        passage_inputs: tokenised passages, Q * (1 + k) rows, query i's positive at row i * (1 + k).
        group_size: 1 + k.
    """

    query_inputs: Mapping[str, torch.Tensor]
    passage_inputs: Mapping[str, torch.Tensor]
    group_size: int

    @property
    def num_queries(self) -> int:
        """Q, the number of queries in the batch."""
        return int(self.query_inputs["input_ids"].shape[0])


class BiEncoderCollator:
    """Turns a list of examples into a :class:`BiEncoderBatch`.

    Args:
        tokenizer: shared by queries and passages.
        corpus: docid -> passage, to look up the texts of positives and negatives.
        query_max_length / passage_max_length: truncation lengths per side.
        query_prefix / passage_prefix: strings put before each text (E5 wants ``"query: "``/``"passage: "``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        corpus: Mapping[str, Passage],
        query_max_length: int,
        passage_max_length: int,
        query_prefix: str = "",
        passage_prefix: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        self.corpus = corpus
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix

    def tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Pad to the longest text in the batch, truncate at ``max_length``."""
        return dict(
            self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        )

    def __call__(self, examples: Sequence[TrainingExample]) -> BiEncoderBatch:
        group_sizes = {1 + len(example.negatives) for example in examples}
        if len(group_sizes) != 1:
            raise ValueError(f"examples in one batch must have the same number of negatives, got {group_sizes}")
        passages = [
            passage_text(self.corpus[docid], self.passage_prefix)
            for example in examples
            for docid in (example.positive, *example.negatives)
        ]
        queries = [self.query_prefix + example.query for example in examples]
        return BiEncoderBatch(
            query_inputs=self.tokenize(queries, self.query_max_length),
            passage_inputs=self.tokenize(passages, self.passage_max_length),
            group_size=group_sizes.pop(),
        )
