"""Readers of a language's data (local layout, Mr. TyDi / MS MARCO rows, MIRACL) into a :class:`RetrievalSplit`.
Bad input raises a DataError naming ``file:line``; what is tolerated and counted instead: docs/data.md."""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import shlex
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mdr.data.corpus import Corpus, Row, cache_root
from mdr.data.schema import DataError, Qrels, Query, RetrievalSplit
from mdr.utils.logging import get_logger

log = get_logger(__name__)

PARSER = "mdr-jsonl-v1"
"""Names the corpus parsing rules below (part of the corpus cache key)."""


class RetrievalReader(Protocol):
    """Anything that loads one split of one language."""

    def load(self, split: str) -> RetrievalSplit:
        """Corpus, queries, qrels (and shipped negatives) of ``split``."""
        ...

    def published_split(self, split: str) -> str:
        """The name under which ``split`` is published (what metrics.json and the report call it)."""
        ...


Skips = dict[str, list[Any]]
"""Rows skipped or normalised: reason -> [count, first ``file:line``]."""


def _skip(skips: Skips, reason: str, where: str) -> None:
    skips.setdefault(reason, [0, where])[0] += 1


def _log_skips(source: Path, skips: Skips) -> None:
    for reason, (count, first) in skips.items():
        log.warning("%s: %d %s (first at %s)", source, count, reason, first)


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file (gzip when named ``*.gz``), a leading BOM dropped."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(
                        f"{path}:{number}: not valid UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})"
                    ) from error
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}:{number + 1}: cannot read ({error})") from error


def iter_jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of ``path``, each a JSON object with the ``required`` keys."""
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: malformed JSON ({error.msg})") from error
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        missing = [key for key in required if key not in record]
        if missing:
            raise DataError(f"{path}:{number}: missing key(s) {missing}")
        yield number, record


def _identifier(value: Any, key: str, path: Path, number: int) -> str:
    """A docid or query id: a non-empty string (integers are accepted and written as strings)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    problem = "null" if value is None else "empty" if isinstance(value, str) else f"a {type(value).__name__}"
    raise DataError(f"{path}:{number}: {key} is {problem}")


def _string(value: Any, key: str, path: Path, number: int) -> str:
    if isinstance(value, str):
        return value
    problem = "null" if value is None else f"a {type(value).__name__}, not a string"
    raise DataError(f"{path}:{number}: {key} is {problem}")


def _add_query(
    queries: dict[str, Query], lines: dict[str, int], raw_id: Any, text: Any, key: str, path: Path, number: int
) -> str:
    """Add a query read at ``path:number`` (a unique id, a non-empty text) to ``queries``; returns its id."""
    query_id = _identifier(raw_id, key, path, number)
    if query_id in lines:
        raise DataError(f"{path}:{number}: duplicate {key} {query_id!r} (first at line {lines[query_id]})")
    lines[query_id] = number
    text = _string(text, "query", path, number)
    if not text.strip():
        raise DataError(f"{path}:{number}: empty query text")
    queries[query_id] = Query(query_id, text)
    return query_id


def corpus_rows(paths: Sequence[Path]) -> Iterator[Row]:
    """Validated ``(docid, title, text, file index, line)`` rows of ``{"docid", "text", ["title"]}`` JSONL files."""
    for index, path in enumerate(paths):
        skips: Skips = {}
        for number, record in iter_jsonl(path, ("docid", "text")):
            docid = _identifier(record["docid"], "docid", path, number)
            text = _string(record["text"], "text", path, number)
            if "title" in record and record["title"] is None:
                _skip(skips, "null titles read as no title", f"{path}:{number}")
            title = "" if record.get("title") is None else _string(record["title"], "title", path, number)
            yield docid, title, text, index, number
        _log_skips(path, skips)


def read_queries(path: Path) -> dict[str, Query]:
    """``{"query_id", "query"}`` lines; null/empty query texts and duplicate ids are errors."""
    queries: dict[str, Query] = {}
    lines: dict[str, int] = {}
    for number, record in iter_jsonl(path, ("query_id", "query")):
        _add_query(queries, lines, record["query_id"], record["query"], "query_id", path, number)
    return queries


def read_topics(path: Path) -> dict[str, Query]:
    """MIRACL topics, ``qid TAB query`` per line; empty texts and duplicate ids are errors."""
    queries: dict[str, Query] = {}
    lines: dict[str, int] = {}
    for number, line in iter_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        query_id, tab, text = line.partition("\t")
        if not tab:
            raise DataError(f"{path}:{number}: expected 'qid<TAB>query', got {line[:80]!r}")
        _add_query(queries, lines, query_id.strip(), text.strip(), "query id", path, number)
    return queries


def read_qrels(path: Path, corpus: Mapping[str, Any], queries: Mapping[str, Query], queries_file: str = "") -> Qrels:
    """TREC qrels ``qid iteration docid grade`` (0 kept) checked against the corpus and ``queries``, grades unique."""
    if not path.is_file():
        raise DataError(f"{path}: qrels file not found")
    qrels: Qrels = {}
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    skips: Skips = {}
    for number, line in iter_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise DataError(f"{path}:{number}: expected 'qid iteration docid grade', got {line.strip()!r}")
        query_id, _, docid, grade = fields
        try:
            value = int(grade)
        except ValueError as error:
            raise DataError(f"{path}:{number}: relevance grade {grade!r} is not an integer") from error
        if query_id not in queries:
            raise DataError(f"{path}:{number}: query id {query_id!r} is not in {queries_file or 'the queries file'}")
        if docid not in corpus:
            raise DataError(f"{path}:{number}: docid {docid!r} is not in the corpus")
        previous = seen.get((query_id, docid))
        if previous is not None:
            if previous[0] != value:
                raise DataError(
                    f"{path}:{number}: query {query_id!r} docid {docid!r} graded {value} here and {previous[0]} "
                    f"at line {previous[1]}"
                )
            _skip(skips, "repeated qrels lines (same query, docid and grade) skipped", f"{path}:{number}")
            continue
        seen[(query_id, docid)] = (value, number)
        qrels.setdefault(query_id, {})[docid] = value
    _log_skips(path, skips)
    return qrels


class _Reader:
    """What every reader shares: the language's corpus, stored under ``cache_dir`` on first use and then reused."""

    cache_dir: str | Path | None = None
    split_names: Mapping[str, str] = {}  # mdr split -> published split (MIRACL's ``test`` is its ``dev``)
    _corpus: Corpus | None = None

    def corpus_files(self) -> list[Path]:  # the language's corpus files, in order
        raise NotImplementedError

    def corpus(self) -> Corpus:
        """The language's corpus, stored on first use and then reused (per reader and across processes)."""
        if self._corpus is None:
            files = self.corpus_files()
            self._corpus = Corpus.build_cached(lambda: corpus_rows(files), files, PARSER, self.cache_dir)
        return self._corpus

    def published_split(self, split: str) -> str:
        """The name under which ``split`` is published (``split_names``)."""
        return self.split_names.get(split, split)


class LocalReader(_Reader):
    """The local layout: ``root/corpus.jsonl``, ``root/queries/{split}.jsonl``, ``root/qrels/{split}.txt``
    (``language``: the ISO code, for messages; ``cache_dir``: ``paths.cache_dir``, where the corpus is stored)."""

    def __init__(self, root: str | Path, language: str = "", cache_dir: str | Path | None = None) -> None:
        self.root, self.language, self.cache_dir = Path(root), language, cache_dir

    def corpus_files(self) -> list[Path]:
        if not self.root.is_dir():
            raise DataError(f"language {self.language!r} has no data: {self.root} does not exist")
        path = self.root / "corpus.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        return [path]

    def load(self, split: str) -> RetrievalSplit:
        """Load ``split`` (e.g. ``train`` or ``test``)."""
        corpus = self.corpus()
        queries_path = self.root / "queries" / f"{split}.jsonl"
        queries = read_queries(queries_path)
        qrels = read_qrels(self.root / "qrels" / f"{split}.txt", corpus, queries, str(queries_path))
        return RetrievalSplit(corpus=corpus, queries=queries, qrels=qrels)


# Published dataset files from a local folder or the Hugging Face hub (pinned revision); no dataset script is run.
def looks_local(repo: str) -> bool:
    """True for a value meant as a folder: it exists, or it is not of the hub's ``owner/name`` form."""
    return Path(repo).expanduser().is_dir() or repo.startswith(("/", ".", "~")) or repo.count("/") != 1


def download_command(repo: str, revision: str | None, patterns: Sequence[str], local_dir: Path | str) -> str:
    """The shell command that puts ``patterns`` of dataset ``repo`` at ``revision`` into ``local_dir``."""
    words = ["hf", "download", repo, "--repo-type", "dataset"]
    if revision:
        words += ["--revision", revision]
    for pattern in patterns:
        words += ["--include", pattern]
    return shlex.join([*words, "--local-dir", str(local_dir)])


@dataclass(frozen=True)
class DatasetFiles:
    """The files ``patterns`` (globs) of one dataset: a local folder or a hub id (``repo``), set by config ``key``;
    ``published``: the canonical hub id, for download commands; ``suggest_dir``: where messages suggest them to."""

    repo: str
    revision: str | None
    patterns: tuple[str, ...]
    key: str
    published: str
    suggest_dir: Path

    @functools.cached_property
    def folder(self) -> tuple[Path, bool]:
        """The folder holding the files (fetched once from the hub), and whether it came from the hub."""
        if looks_local(self.repo):
            folder = Path(self.repo).expanduser().resolve()
            if not folder.is_dir():
                command = download_command(self.published, self.revision, self.patterns, folder)
                raise DataError(
                    f"{self.key}={self.repo}: no such folder; to fetch the published files there run\n  {command}"
                )
            return folder, False
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(
                repo_id=self.repo, repo_type="dataset", revision=self.revision, allow_patterns=list(self.patterns)
            )
        except Exception as error:  # offline, no network, unknown repo/revision, gated repo: one clear message
            offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
            reason = "HF_HUB_OFFLINE=1 and it is not in the HF cache" if offline else f"{type(error).__name__}: {error}"
            raise DataError(self.missing(reason)) from error
        return Path(path), True

    def file(self, relative: str) -> Path:
        """``relative`` inside :attr:`folder`; a DataError with the command that fetches it when absent."""
        folder, from_hub = self.folder
        path = folder / relative
        if path.is_file():
            return path
        if from_hub:
            raise DataError(self.missing(f"{relative} is not in the snapshot {folder}"))
        command = download_command(self.published, self.revision, self.patterns, folder)
        raise DataError(
            f"{path}: file not found ({self.key}={self.repo}); to fetch the published files run\n  {command}"
        )

    def missing(self, reason: str) -> str:
        """The error text for hub files that could not be had (``reason``), with the command that gets them."""
        local = self.suggest_dir / self.repo
        return (
            f"{self.key}={self.repo} (revision {self.revision or 'main'}): the files {list(self.patterns)} could not "
            f"be read ({reason}). On a machine with network access run\n"
            f"  {download_command(self.repo, self.revision, self.patterns, local)}\n"
            f"then (after copying that folder here if needed) pass {self.key}={local}"
        )


class _PublishedReader(_Reader):
    """The queries and corpus repos (hub ids or folders) of a published set (``config``: the language's name in it,
    null: absent; ``config_prefix``: these keys' place in the config; ``published``: the canonical hub ids)."""

    published: tuple[str, str] = ("", "")
    queries_patterns: tuple[str, ...] = ()
    corpus_patterns: tuple[str, ...] = ()

    def __init__(
        self,
        queries_repo: str,
        corpus_repo: str,
        config: str | None = None,
        revision: str | None = None,
        corpus_revision: str | None = None,
        split_names: Mapping[str, str] | None = None,
        language: str = "",
        cache_dir: str | Path | None = None,
        config_prefix: str = "data",
        published: Sequence[str] | None = None,
    ) -> None:
        self.config, self.split_names, self.language = config, dict(split_names or {}), language
        self.cache_dir = cache_root(cache_dir)
        self.config_prefix = config_prefix
        if published is not None:
            self.published = (str(published[0]), str(published[1]))
        if not config and any("{config}" in p for p in (*self.queries_patterns, *self.corpus_patterns)):
            raise DataError(
                f"language {language!r} has no config in {self.published[0] or queries_repo} "
                f"(conf/language/{language}.yaml sets it to null)"
            )
        self.files = {
            "queries": self._files("queries", str(queries_repo), revision, self.queries_patterns, self.published[0]),
            "corpus": self._files("corpus", str(corpus_repo), corpus_revision, self.corpus_patterns, self.published[1]),
        }

    def _files(
        self, role: str, repo: str, revision: str | None, patterns: Sequence[str], published: str
    ) -> DatasetFiles:
        filled = tuple(pattern.format(config=self.config, split="*") for pattern in patterns)
        key = f"{self.config_prefix}.{role}_repo"
        return DatasetFiles(repo, revision, filled, key, published or repo, self.cache_dir / "datasets")


class MrTydiReader(_PublishedReader):
    """Mr. TyDi v1.1 (or a set in its row schema) from its published files (``queries_file`` / ``corpus_file``: the
    layout, with ``{config}`` and ``{split}``); positives and shipped negatives from each row's passage lists."""

    published = ("castorini/mr-tydi", "castorini/mr-tydi-corpus")

    def __init__(
        self,
        *args: Any,
        queries_file: str = "mrtydi-v1.1-{config}/{split}.jsonl.gz",
        corpus_file: str = "mrtydi-v1.1-{config}/corpus.jsonl.gz",
        **options: Any,
    ) -> None:
        self.queries_file, self.corpus_file = queries_file, corpus_file
        self.queries_patterns, self.corpus_patterns = (queries_file,), (corpus_file,)
        super().__init__(*args, **options)

    def corpus_files(self) -> list[Path]:
        return [self.files["corpus"].file(self.corpus_file.format(config=self.config))]

    def load(self, split: str) -> RetrievalSplit:
        """Load ``split``: queries, qrels (every positive at grade 1) and shipped negatives from the rows."""
        path = self.files["queries"].file(
            self.queries_file.format(config=self.config, split=self.published_split(split))
        )
        corpus = self.corpus()
        queries: dict[str, Query] = {}
        lines: dict[str, int] = {}
        qrels: Qrels = {}
        negatives: dict[str, list[str]] = {}
        skips: Skips = {}
        for number, record in iter_jsonl(path, ("query_id", "query")):
            query_id = _add_query(queries, lines, record["query_id"], record["query"], "query_id", path, number)
            positives = _row_docids(record, "positive_passages", path, number)
            if (absent := next((d for d in positives if d not in corpus), None)) is not None:
                raise DataError(f"{path}:{number}: query {query_id!r} has positive docid {absent!r} not in the corpus")
            if positives:
                qrels[query_id] = dict.fromkeys(positives, 1)
            shipped = []
            for docid in _row_docids(record, "negative_passages", path, number):
                if docid in corpus:
                    shipped.append(docid)
                else:
                    _skip(skips, "shipped negatives not in the corpus dropped", f"{path}:{number}")
            if shipped:
                negatives[query_id] = shipped
        _log_skips(path, skips)
        return RetrievalSplit(corpus=corpus, queries=queries, qrels=qrels, shipped_negatives=negatives)


def _row_docids(record: Mapping[str, Any], key: str, path: Path, number: int) -> list[str]:
    """The docids of a row's passage list (null or absent: none, as the published loading script reads it)."""
    value = record.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{path}:{number}: {key} is a {type(value).__name__}, expected a list of passages")
    docids = []
    for passage in value:
        if not isinstance(passage, dict) or "docid" not in passage:
            raise DataError(f"{path}:{number}: {key} holds {str(passage)[:80]!r}, expected {{docid, title, text}}")
        docids.append(_identifier(passage["docid"], f"{key} docid", path, number))
    return list(dict.fromkeys(docids))


_SHARD = re.compile(r"docs-(\d+)\.jsonl\.gz")


class MiraclReader(_PublishedReader):
    """MIRACL v1.0 from its published topics, qrels and corpus shards; grade-0 judgements are also shipped negatives."""

    published = ("miracl/miracl", "miracl/miracl-corpus")
    queries_patterns = ("miracl-v1.0-{config}/topics/*", "miracl-v1.0-{config}/qrels/*")
    corpus_patterns = ("miracl-corpus-v1.0-{config}/docs-*.jsonl.gz",)

    def corpus_files(self) -> list[Path]:
        """``docs-0.jsonl.gz``, ``docs-1.jsonl.gz``, ... in numeric order; a gap in the numbering is an error."""
        folder, _ = self.files["corpus"].folder
        shard_dir = folder / f"miracl-corpus-v1.0-{self.config}"
        shards = sorted(
            (int(match.group(1)), path)
            for path in (shard_dir.glob("docs-*.jsonl.gz") if shard_dir.is_dir() else [])
            if (match := _SHARD.fullmatch(path.name))
        )
        if not shards:
            self.files["corpus"].file(f"miracl-corpus-v1.0-{self.config}/docs-0.jsonl.gz")  # raises with the command
        missing = sorted(set(range(shards[-1][0] + 1)) - {index for index, _ in shards})
        if missing:
            raise DataError(
                f"{shard_dir}: corpus shards {[f'docs-{i}.jsonl.gz' for i in missing]} missing "
                f"(found {len(shards)}); fetch the full set"
            )
        return [path for _, path in shards]

    def load(self, split: str) -> RetrievalSplit:
        """Load ``split``: topics, qrels (grades as published) and grade-0 judgements as shipped negatives."""
        name = f"miracl-v1.0-{self.config}-{self.published_split(split)}.tsv"
        topics = self.files["queries"].file(f"miracl-v1.0-{self.config}/topics/topics.{name}")
        qrels_path = self.files["queries"].file(f"miracl-v1.0-{self.config}/qrels/qrels.{name}")
        corpus = self.corpus()
        queries = read_topics(topics)
        qrels = read_qrels(qrels_path, corpus, queries, str(topics))
        negatives = {
            query_id: [docid for docid, grade in judged.items() if grade == 0]
            for query_id, judged in qrels.items()
            if any(grade == 0 for grade in judged.values())
        }
        return RetrievalSplit(corpus=corpus, queries=queries, qrels=qrels, shipped_negatives=negatives)
