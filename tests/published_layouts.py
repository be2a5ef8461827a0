"""Small local folders in exactly the published file layouts of Mr. TyDi, MIRACL and Tevatron's MS MARCO.

These are what ``hf download <repo> --repo-type dataset --local-dir <folder>`` leaves (gzip included), so the
readers are tested on the layout they meet on an offline compute node.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

SWAHILI = [
    ("Nairobi", "Nairobi ni mji mkuu wa Kenya na mji mkubwa zaidi nchini humo."),
    ("Dodoma", "Dodoma ni mji mkuu wa Tanzania ulioko katikati ya nchi."),
    ("Kilimanjaro", "Mlima Kilimanjaro ndio mlima mrefu zaidi barani Afrika."),
    ("Ziwa Victoria", "Ziwa Victoria ni ziwa kubwa zaidi barani Afrika."),
    ("Mto Nile", "Mto Nile ni mto mrefu unaotiririka kuelekea kaskazini hadi Bahari ya Mediterania."),
    ("Kiswahili", "Kiswahili ni lugha ya Kibantu inayozungumzwa Afrika Mashariki."),
    ("Zanzibar", "Zanzibar ni funguvisiwa katika Bahari ya Hindi karibu na pwani ya Tanzania."),
    ("Mombasa", "Mombasa ni mji wa bandari ulioko pwani ya Kenya."),
    ("Serengeti", "Hifadhi ya Serengeti inajulikana kwa uhamaji mkubwa wa nyumbu."),
    ("Uganda", "Uganda ni nchi isiyo na bahari katika Afrika Mashariki."),
    ("Rwanda", "Rwanda inaitwa nchi ya milima elfu moja."),
    ("Kahawa", "Kahawa ni zao muhimu la biashara katika nchi nyingi za Afrika Mashariki."),
]
QUESTIONS = [
    ("Mji mkuu wa Kenya ni upi?", 0),
    ("Mji mkuu wa Tanzania ni upi?", 1),
    ("Mlima mrefu zaidi Afrika ni upi?", 2),
    ("Ziwa kubwa zaidi Afrika ni lipi?", 3),
    ("Mto upi unatiririka hadi Mediterania?", 4),
    ("Kiswahili ni lugha ya aina gani?", 5),
    ("Zanzibar iko wapi?", 6),
    ("Bandari kuu ya Kenya ni ipi?", 7),
]


def passages(prefix: str = "") -> list[dict[str, str]]:
    """The corpus records, docids ``<prefix><article>#<passage>`` like Mr. TyDi's and MIRACL's."""
    return [{"docid": f"{prefix}{100 + i}#0", "title": title, "text": text} for i, (title, text) in enumerate(SWAHILI)]


def write_gz_lines(path: Path, lines: Iterable[str]) -> Path:
    """Write ``lines`` gzip-compressed, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(f"{line}\n" for line in lines)
    return path


def write_gz_jsonl(path: Path, records: Iterable[dict]) -> Path:
    """Write ``records`` as gzip-compressed JSON lines."""
    return write_gz_lines(path, (json.dumps(record, ensure_ascii=False) for record in records))


def mrtydi_rows(corpus: Sequence[dict], questions: Sequence[tuple[str, int]], start: int = 1) -> list[dict]:
    """Rows in Mr. TyDi's schema; each query's next two passages are its shipped negatives."""
    rows = []
    for offset, (question, answer) in enumerate(questions):
        negatives = [corpus[(answer + k) % len(corpus)] for k in (1, 2)]
        rows.append(
            {
                "query_id": str(start + offset),
                "query": question,
                "positive_passages": [corpus[answer]],
                "negative_passages": negatives,
            }
        )
    return rows


def write_mrtydi(root: Path, language: str = "swahili") -> tuple[Path, Path]:
    """``root/mr-tydi/mrtydi-v1.1-<language>/{train,dev,test}.jsonl.gz`` and the corpus repo beside it."""
    queries, corpus_repo = root / "mr-tydi", root / "mr-tydi-corpus"
    corpus = passages()
    folder = queries / f"mrtydi-v1.1-{language}"
    write_gz_jsonl(folder / "train.jsonl.gz", mrtydi_rows(corpus, QUESTIONS[:5], start=1))
    write_gz_jsonl(folder / "dev.jsonl.gz", mrtydi_rows(corpus, QUESTIONS[5:6], start=20))
    test_rows = mrtydi_rows(corpus, QUESTIONS[5:], start=30)
    for row in test_rows:
        row["negative_passages"] = []  # the published test rows ship no negatives
    write_gz_jsonl(folder / "test.jsonl.gz", test_rows)
    write_gz_jsonl(corpus_repo / f"mrtydi-v1.1-{language}" / "corpus.jsonl.gz", corpus)
    return queries, corpus_repo


def write_miracl(root: Path, lang: str = "sw", shards: int = 3) -> tuple[Path, Path]:
    """``root/miracl/miracl-v1.0-<lang>/{topics,qrels}/...-{train,dev}.tsv`` and ``docs-<i>.jsonl.gz`` shards."""
    queries, corpus_repo = root / "miracl", root / "miracl-corpus"
    corpus = passages()
    for index in range(shards):
        write_gz_jsonl(corpus_repo / f"miracl-corpus-v1.0-{lang}" / f"docs-{index}.jsonl.gz", corpus[index::shards])
    base = queries / f"miracl-v1.0-{lang}"
    for split, chosen, start in (("train", QUESTIONS[:5], 1), ("dev", QUESTIONS[5:], 40)):
        topics = [f"{start + i}\t{question}" for i, (question, _) in enumerate(chosen)]
        qrels = []
        for i, (_, answer) in enumerate(chosen):
            qrels.append(f"{start + i}\tQ0\t{corpus[answer]['docid']}\t1")
            qrels.append(f"{start + i}\tQ0\t{corpus[(answer + 1) % len(corpus)]['docid']}\t0")  # judged non-relevant
        (base / "topics").mkdir(parents=True, exist_ok=True)
        (base / "qrels").mkdir(parents=True, exist_ok=True)
        (base / "topics" / f"topics.miracl-v1.0-{lang}-{split}.tsv").write_text("\n".join(topics) + "\n")
        (base / "qrels" / f"qrels.miracl-v1.0-{lang}-{split}.tsv").write_text("\n".join(qrels) + "\n")
    return queries, corpus_repo


def write_msmarco(root: Path) -> tuple[Path, Path]:
    """Tevatron's layout: ``msmarco-passage/{train,dev}.jsonl.gz`` and ``msmarco-passage-corpus/corpus.jsonl.gz``."""
    queries, corpus_repo = root / "msmarco-passage", root / "msmarco-passage-corpus"
    corpus = [{"docid": str(i), "title": "-", "text": text} for i, (_, text) in enumerate(SWAHILI)]
    write_gz_jsonl(queries / "train.jsonl.gz", mrtydi_rows(corpus, QUESTIONS, start=1000))
    write_gz_jsonl(queries / "dev.jsonl.gz", mrtydi_rows(corpus, QUESTIONS[:2], start=2000))
    write_gz_jsonl(corpus_repo / "corpus.jsonl.gz", corpus)
    return queries, corpus_repo
