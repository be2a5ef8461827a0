"""Language-agnostic BM25 tokens for the bm25s backend: words, or character bigrams for unspaced scripts."""

from __future__ import annotations

import re
import unicodedata

WORD = re.compile(r"\w+", re.UNICODE)
# Thai, Lao, Khmer, Myanmar, CJK ideographs, kana and hangul syllables: written without spaces between words.
UNSPACED = re.compile(r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased word tokens; a word in an unspaced script becomes its overlapping character bigrams."""
    tokens: list[str] = []
    for word in WORD.findall(unicodedata.normalize("NFKC", text).lower()):
        if UNSPACED.search(word) and len(word) > 2:
            tokens.extend(word[i : i + 2] for i in range(len(word) - 1))
        else:
            tokens.append(word)
    return tokens
