"""Reading at scale: store a synthetic corpus as Arrow, open it memory-mapped, and measure host memory per process.

    python benchmarks/scale_read.py --sizes 10000 100000            # one JSON line per size
    python benchmarks/scale_read.py --sizes 1000000 --workdir /tmp/mdr-scale

For each size: a synthetic ``corpus.jsonl.gz`` (60-120 words per passage from word lists in eight scripts, so
multi-byte UTF-8 as in Mr. TyDi / MIRACL) is read by the real reader path (``corpus_rows`` + ``Corpus.build_cached``)
in a child process (conversion time and that process's peak RSS: the conversion streams). Then two fresh
processes open the stored corpus one after the other; each reports its memory after importing mdr (the process
floor), after opening, and after touching every row once (``passage(row)`` and ``row(docid)`` for all rows).

Memory figures come from ``/proc/self/status`` (``VmRSS`` = ``RssAnon`` + ``RssFile`` + ``RssShmem``),
``/proc/self/smaps_rollup`` (``Pss``: shared pages divided among the processes mapping them) and ``ru_maxrss``.
The mapped Arrow/index pages count in ``RssFile`` but are the kernel's page cache, one physical copy for every
process: the per-process cost is ``RssAnon`` (private memory). The second process opens after the first has
touched everything; its ``RssAnon`` must stay flat and the two processes' ``Pss`` must add up to about one copy.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# syllables per script: Latin (Swahili-, Finnish-, Indonesian-like), Thai, Devanagari, Bengali, Telugu,
# Cyrillic, Arabic, CJK
SYLLABLES = [
    "ka ki ku ma mi mu na ni nu wa we ya ta te to li la sa si ha ja",
    "ก ข ค ง จ ช ซ ด ต ถ ท น บ ป ผ พ ม ย ร ล ว ส ห อ า ิ ี ุ ู เ แ โ",
    "क ख ग घ च छ ज झ ट ठ ड त थ द ध न प फ ब भ म य र ल व श स ह ा ि ी",
    "ক খ গ ঘ চ ছ জ ঝ ট ঠ ড ত থ দ ধ ন প ফ ব ভ ম য র ল শ স হ া ি",
    "క ఖ గ ఘ చ ఛ జ ఝ ట ఠ డ త థ ద ధ న ప ఫ బ భ మ య ర ల వ శ స హ ా ి",
    "ка ко ну ра ли ст ве до пр то не по за ми ры ло ше",
    "ال مع من في عل ها كا لا سا تو بي ري نا دي قو",
    "的 一 是 不 了 在 人 有 我 他 这 个 们 中 来 上 大 为 和 国",
]


def write_synthetic_corpus(path: Path, num_passages: int, seed: int = 0) -> int:
    """Write ``num_passages`` ``{docid, title, text}`` lines to a gzip JSONL file; returns its size in bytes."""
    rng = random.Random(seed)
    vocabularies = []
    for script in SYLLABLES:
        syllables = script.split()
        vocabularies.append(["".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(5000)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as handle:
        for index in range(num_passages):
            words = vocabularies[index % len(vocabularies)]
            title = " ".join(rng.choices(words, k=rng.randint(1, 4)))
            text = " ".join(rng.choices(words, k=rng.randint(60, 120)))
            handle.write(json.dumps({"docid": f"{index // 7}#{index % 7}", "title": title, "text": text}) + "\n")
    tmp.rename(path)
    return path.stat().st_size


def memory() -> dict[str, float]:
    """This process's memory in MiB: VmRSS, RssAnon, RssFile, Pss, peak (ru_maxrss)."""
    figures: dict[str, float] = {}
    for name, keys in (("/proc/self/status", ("VmRSS", "RssAnon", "RssFile")), ("/proc/self/smaps_rollup", ("Pss",))):
        for line in Path(name).read_text().splitlines():
            key = line.split(":")[0]
            if key in keys:
                figures[key] = int(line.split()[1]) / 1024
    figures["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {key: round(value, 1) for key, value in figures.items()}


def child_convert(source: Path, cache: Path) -> None:
    """Build the stored corpus from ``source`` through the reader path; print seconds and peak RSS."""
    from mdr.data.corpus import Corpus
    from mdr.data.readers import PARSER, corpus_rows

    floor = memory()
    started = time.perf_counter()
    corpus = Corpus.build_cached(lambda: corpus_rows([source]), [source], PARSER, cache)
    seconds = time.perf_counter() - started
    stored = sum(p.stat().st_size for p in corpus.folder.iterdir())
    print(json.dumps({"seconds": seconds, "floor": floor, "after": memory(), "stored_bytes": stored}), flush=True)


def child_open(source: Path, cache: Path) -> None:
    """Open the stored corpus, touch every row; report memory at each step, then Pss on request."""
    from mdr.data.corpus import Corpus
    from mdr.data.readers import PARSER, corpus_rows

    floor = memory()
    started = time.perf_counter()
    corpus = Corpus.build_cached(lambda: corpus_rows([source]), [source], PARSER, cache)  # stored: just opens
    open_seconds = time.perf_counter() - started
    opened = memory()
    started = time.perf_counter()
    for row in range(len(corpus)):
        passage = corpus.passage(row)
        if corpus.row(passage.docid) != row:
            raise AssertionError(f"lookup of {passage.docid!r} failed")
    touch_seconds = time.perf_counter() - started
    report = {"open_s": open_seconds, "touch_s": touch_seconds, "floor": floor, "opened": opened, "touched": memory()}
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # wait until the other process has touched everything too
    print(json.dumps({"both_touched": memory()}), flush=True)
    sys.stdin.readline()


def _spawn(mode: str, source: Path, cache: Path) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, f"--child-{mode}", str(source), str(cache)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def _read(process: subprocess.Popen[str]) -> dict:
    line = process.stdout.readline()  # type: ignore[union-attr]
    if not line:
        raise RuntimeError(f"child exited with {process.wait()}")
    return json.loads(line)


def measure(num_passages: int, workdir: Path) -> dict:
    """One size: generate, convert (child), open and touch in two processes one after the other."""
    source = workdir / f"n{num_passages}" / "corpus.jsonl.gz"
    cache = workdir / f"n{num_passages}" / "cache"
    if not source.is_file():
        write_synthetic_corpus(source, num_passages)
    shutil.rmtree(cache, ignore_errors=True)  # time a fresh conversion
    converter = _spawn("convert", source, cache)
    converted = _read(converter)
    converter.wait()
    first = _spawn("open", source, cache)
    one = _read(first)
    second = _spawn("open", source, cache)
    two = _read(second)
    for process in (first, second):
        process.stdin.write("\n")  # type: ignore[union-attr]
        process.stdin.flush()  # type: ignore[union-attr]
    one_both, two_both = _read(first), _read(second)
    for process in (first, second):
        process.stdin.write("\n")  # type: ignore[union-attr]
        process.stdin.close()  # type: ignore[union-attr]
        process.wait()

    def per_passage(after: dict, before: dict, key: str) -> float:
        return round((after[key] - before[key]) * 2**20 / num_passages, 1)

    return {
        "passages": num_passages,
        "source_gz_bytes": source.stat().st_size,
        "stored_bytes": converted["stored_bytes"],
        "convert_s": round(converted["seconds"], 2),
        "convert_peak_rss_mib": converted["after"]["ru_maxrss"],
        "convert_rss_floor_mib": converted["floor"]["VmRSS"],
        "open_s": round(one["open_s"], 4),
        "touch_all_rows_s": round(one["touch_s"], 2),
        "process_floor_mib": one["floor"],
        "first_after_open_mib": one["opened"],
        "first_after_touch_mib": one["touched"],
        "second_after_open_mib": two["opened"],
        "second_after_touch_mib": two["touched"],
        "anon_bytes_per_passage_first": per_passage(one["touched"], one["floor"], "RssAnon"),
        "anon_bytes_per_passage_second": per_passage(two["touched"], two["floor"], "RssAnon"),
        "rss_bytes_per_passage_first_incl_page_cache": per_passage(one["touched"], one["floor"], "VmRSS"),
        "pss_mib_both_touched": [one_both["both_touched"]["Pss"], two_both["both_touched"]["Pss"]],
        "rss_file_mib_both_touched": [one_both["both_touched"]["RssFile"], two_both["both_touched"]["RssFile"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mdr-scale-read"))
    parser.add_argument("--child-convert", nargs=2, type=Path, metavar=("SOURCE", "CACHE"))
    parser.add_argument("--child-open", nargs=2, type=Path, metavar=("SOURCE", "CACHE"))
    args = parser.parse_args()
    if args.child_convert:
        return child_convert(*args.child_convert)
    if args.child_open:
        return child_open(*args.child_open)
    for size in args.sizes:
        print(json.dumps({"cpu_count": os.cpu_count(), **measure(size, args.workdir)}), flush=True)


if __name__ == "__main__":
    main()
