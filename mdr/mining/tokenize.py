"""Language-agnostic BM25 tokens for the bm25s backend: words, or character bigrams for unspaced scripts."""

from __future__ import annotations

import unicodedata

TOKENIZER_VERSION = "words+bigrams-v2"
"""Part of the pool cache key: change it whenever :func:`bm25_tokens` changes."""

# Thai, Lao, Myanmar, Khmer, kana, CJK ideographs and hangul: written without spaces between words.
UNSPACED = (
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x3040, 0x30FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7AF),
)


def _is_word_char(char: str) -> bool:
    # letters, combining marks (Thai vowels, Devanagari matras) and digits; Python's \w misses the marks
    return unicodedata.category(char)[0] in "LMN"


def _unspaced(word: str) -> bool:
    return any(low <= ord(char) <= high for char in word for low, high in UNSPACED)


def words(text: str) -> list[str]:
    """Maximal runs of letters, marks and digits, NFKC-normalised and lower-cased."""
    found: list[str] = []
    current: list[str] = []
    for char in unicodedata.normalize("NFKC", text).lower():
        if _is_word_char(char):
            current.append(char)
        elif current:
            found.append("".join(current))
            current = []
    if current:
        found.append("".join(current))
    return found


def bm25_tokens(text: str) -> list[str]:
    """Word tokens; a word in an unspaced script becomes its overlapping character bigrams."""
    tokens: list[str] = []
    for word in words(text):
        if len(word) > 2 and _unspaced(word):
            tokens.extend(word[i : i + 2] for i in range(len(word) - 1))
        else:
            tokens.append(word)
    return tokens
