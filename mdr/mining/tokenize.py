"""Language-agnostic BM25 tokens for the bm25s backend: words, or character bigrams for unspaced scripts.

Every language gets the same rule (no stemming, no stopwords): NFKC normalisation, lower case, maximal runs of
letters, combining marks and digits (Unicode categories L*, M*, N*), and a word that contains a character of an
unspaced script (Thai, Lao, Myanmar, Khmer, kana, CJK ideographs, hangul) of more than two characters becomes its
overlapping character bigrams. So Thai, Chinese and Japanese are searched by character bigrams (the CJK
analyzer's scheme, applied to Thai as well), Korean eojeol longer than two syllables too, and every other
language by surface words.
"""

from __future__ import annotations

import re
import unicodedata

import regex

TOKENIZER_VERSION = "words+bigrams-v3"
"""Part of the pool and index cache keys: change it whenever :func:`bm25_tokens` changes.

v3: words found by the ``regex`` module's Unicode tables (categories L, M, N) instead of a per-character
``unicodedata`` loop (same rule; characters assigned after Python's Unicode version now count as letters).
"""

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

# letters, combining marks (Thai vowels, Devanagari matras) and digits; Python's \w misses the marks
_WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")
_ASCII_WORD = re.compile(r"[a-z0-9]+")  # the same rule on ASCII text (no marks there), twice as fast
_UNSPACED = regex.compile("[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in UNSPACED) + "]")
_FIRST_UNSPACED = chr(UNSPACED[0][0])


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def words(text: str) -> list[str]:
    """Maximal runs of letters, marks and digits, NFKC-normalised and lower-cased."""
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    return _WORD.findall(_normalise(text))


def bm25_tokens(text: str) -> list[str]:
    """Word tokens; a word in an unspaced script becomes its overlapping character bigrams."""
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    normalised = _normalise(text)
    found = _WORD.findall(normalised)
    # every unspaced script sits above U+0E00: Latin, Greek, Cyrillic, Arabic and Indic text skips the search
    if max(normalised, default="") < _FIRST_UNSPACED or not _UNSPACED.search(normalised):
        return found
    tokens: list[str] = []
    for word in found:
        if len(word) > 2 and _UNSPACED.search(word):
            tokens.extend([word[i : i + 2] for i in range(len(word) - 1)])
        else:
            tokens.append(word)
    return tokens
