"""BM25 tokens for the bm25s backend (docs/negatives.md): NFKC, lower-cased runs of letters, marks and digits; a longer
word in an unspaced script becomes its character bigrams (Thai: dictionary words with ``tokenizer="thai_words"``)."""

from __future__ import annotations

import re
import unicodedata

import regex

TOKENIZER_VERSION = "words+bigrams-v3"
"""Part of the pool and index cache keys: change it whenever :func:`bm25_tokens` changes."""
TOKENIZERS = ("default", "thai_words")
"""``negatives.pool.tokenizer`` values: mdr's words + bigrams, or Thai dictionary words."""

_WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")  # marks too (Thai vowels, Devanagari matras): Python's \w misses them
_ASCII_WORD = re.compile(r"[a-z0-9]+")  # the same rule on ASCII text, twice as fast
# Thai, Lao, Myanmar, Khmer, kana, CJK ideographs, hangul
_UNSPACED = regex.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]"
)
_FIRST_UNSPACED = "\u0e00"
_THAI = regex.compile(r"[\u0E00-\u0E7F]")


def tokenizer_version(tokenizer: str = "default") -> str:
    """The cache-key name of ``tokenizer``: :data:`TOKENIZER_VERSION`, plus the segmenter and its version."""
    if tokenizer == "default":
        return TOKENIZER_VERSION
    if tokenizer != "thai_words":
        raise ValueError(f"negatives.pool.tokenizer={tokenizer!r}: expected one of {', '.join(TOKENIZERS)}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{TOKENIZER_VERSION}+thai_words(pythainlp-{version('pythainlp')}-newmm)"
    except PackageNotFoundError as error:
        raise RuntimeError(
            "negatives.pool.tokenizer=thai_words needs PyThaiNLP: pip install -e '.[thai]' (scripts/setup.sh does)"
        ) from error


def _thai_words(word: str) -> list[str]:
    from pythainlp.tokenize import word_tokenize

    return [token for token in word_tokenize(word, engine="newmm", keep_whitespace=False) if token.strip()]


def bm25_tokens(text: str, tokenizer: str = "default") -> list[str]:
    """BM25 tokens of ``text`` (the module's rules)."""
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    normalised = unicodedata.normalize("NFKC", text).lower()
    found = _WORD.findall(normalised)
    # every unspaced script sits above U+0E00: Latin, Greek, Cyrillic, Arabic and Indic text skips the search
    if max(normalised, default="") < _FIRST_UNSPACED or not _UNSPACED.search(normalised):
        return found
    tokens: list[str] = []
    for word in found:
        if tokenizer == "thai_words" and _THAI.search(word):
            tokens.extend(_thai_words(word))
        elif len(word) > 2 and _UNSPACED.search(word):
            tokens.extend([word[i : i + 2] for i in range(len(word) - 1)])
        else:
            tokens.append(word)
    return tokens
