"""Language-agnostic BM25 tokens for the bm25s backend: words, or character bigrams for unspaced scripts.

Every language gets the same rule (no stemming, no stopwords): NFKC normalisation, lower case, maximal runs of
letters, combining marks and digits (Unicode categories L*, M*, N*), and a word that contains a character of an
unspaced script (Thai, Lao, Myanmar, Khmer, kana, CJK ideographs, hangul) of more than two characters becomes its
overlapping character bigrams. So Thai, Chinese and Japanese are searched by character bigrams (the CJK
analyzer's scheme, applied to Thai as well), Korean eojeol longer than two syllables too, and every other
language by surface words.

``tokenizer="thai_words"`` (``negatives.pool.tokenizer``) segments Thai-script runs into dictionary words
instead (PyThaiNLP's ``newmm``: maximal matching over its Thai dictionary, the scheme of Lucene's ThaiAnalyzer,
which breaks Thai with ICU's dictionary); other unspaced scripts keep their bigrams.
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
_THAI = regex.compile(r"[\u0E00-\u0E7F]")

TOKENIZERS = ("default", "thai_words")
"""``negatives.pool.tokenizer`` values: mdr's words + bigrams, or Thai dictionary words."""


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def words(text: str) -> list[str]:
    """Maximal runs of letters, marks and digits, NFKC-normalised and lower-cased."""
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    return _WORD.findall(_normalise(text))


def tokenizer_version(tokenizer: str = "default") -> str:
    """The cache-key name of ``tokenizer``: :data:`TOKENIZER_VERSION`, plus the segmenter and its version."""
    if tokenizer == "default":
        return TOKENIZER_VERSION
    if tokenizer == "thai_words":
        return f"{TOKENIZER_VERSION}+thai_words(pythainlp-{_pythainlp_version()}-newmm)"
    raise ValueError(f"negatives.pool.tokenizer={tokenizer!r}: expected one of {', '.join(TOKENIZERS)}")


def _pythainlp_version() -> str:
    try:
        from importlib.metadata import version

        return version("pythainlp")
    except Exception as error:  # PackageNotFoundError
        raise RuntimeError(
            "negatives.pool.tokenizer=thai_words needs PyThaiNLP: pip install -e '.[thai]' (scripts/setup.sh does)"
        ) from error


def _thai_words(word: str) -> list[str]:
    from pythainlp.tokenize import word_tokenize

    return [token for token in word_tokenize(word, engine="newmm", keep_whitespace=False) if token.strip()]


def bm25_tokens(text: str, tokenizer: str = "default") -> list[str]:
    """Word tokens; a word in an unspaced script becomes its overlapping character bigrams.

    With ``tokenizer="thai_words"`` a word holding Thai script becomes its dictionary words instead.
    """
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    normalised = _normalise(text)
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
