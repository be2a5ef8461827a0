"""Caches keyed by content and verified when opened (issue 19 items 1, 5, 6, 7) and locks that hold on cluster file
systems (issue 16 defect 7). Each probe breaks a cache the way a kill, a full disk or a bad copy would and checks
that the entry is rebuilt (with a logged reason) or refused with an error naming the file."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from test_denoise import POOLS, TINY_SETTINGS, _split

import mdr.mining.bm25
import mdr.utils.cache as cache
from mdr import training
from mdr.data.corpus import ARROW_FILE, Corpus
from mdr.data.readers import LocalReader
from mdr.data.schema import RetrievalSplit
from mdr.evaluation.evaluator import EmbeddingShards, ShardPlan
from mdr.mining.bm25 import bm25s_search
from mdr.mining.denoise import DenoiseSettings, NegativePools, denoise_pools
from mdr.mining.miner import PoolSettings, mine
from mdr.models.bi_encoder import SETTINGS_FILE, BiEncoder, load_tokenizer
from mdr.stage_cache import run_schedule, stage_keys
from mdr.training import pool_key
from mdr.utils.cache import CacheError, cache_lock, remove_stale_builds, staging_name
from mdr.validation import build_spec

from conftest import DATA_DIR, XQUAD_SENT


def _cut(path: Path) -> None:
    """Keep the first half of ``path`` (a kill or a full disk during a copy)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _cut_lines(path: Path) -> None:
    """Keep the first half of ``path``'s lines (every kept line whole: nothing for a parser to notice)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")


def _garble(path: Path, at: float = 0.6) -> None:
    """Flip 64 bytes at ``at`` of ``path``'s length, the size unchanged (a bad disk block, a torn write)."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    path.write_bytes(bytes(data))


def _unsampled(path: Path, start: int, end: int) -> bool:
    """Whether bytes ``start:end`` of ``path`` lie outside every block :func:`cache.sample_digest` reads."""
    size = path.stat().st_size
    step = max(0, size - cache.SAMPLE_BYTES) / (cache.SAMPLE_BLOCKS - 1)
    blocks = [(int(i * step), int(i * step) + cache.SAMPLE_BYTES) for i in range(cache.SAMPLE_BLOCKS)]
    return all(end <= low or start >= high for low, high in blocks)


def _overwrite(path: Path, start: int, data: bytes) -> None:
    """Put ``data`` at ``start`` of ``path`` in place, its size unchanged."""
    with path.open("r+b") as handle:
        handle.seek(start)
        handle.write(data)


def _recorded_sample(manifest_path: Path, name: str) -> str:
    return str(json.loads(manifest_path.read_text())["files"][name]["sample"])


# ---- corpus ---------------------------------------------------------------------------------------------------


def test_a_truncated_corpus_arrow_is_stored_again_and_a_direct_open_names_the_file(tmp_path: Path) -> None:
    reader = LocalReader(str(XQUAD_SENT / "th"), "th", cache_dir=str(tmp_path / "cache"))
    first = reader.load("train")
    folder = first.corpus.folder
    rows = [first.corpus.passage(r) for r in range(len(first.corpus))]
    _cut(folder / ARROW_FILE)
    # old code: pyarrow's bare 'Not an Arrow file' on this and every later run
    with pytest.raises(CacheError, match=rf"{folder}.*delete {folder}"):
        Corpus(folder)
    again = LocalReader(str(XQUAD_SENT / "th"), "th", cache_dir=str(tmp_path / "cache")).load("train")
    assert again.corpus.folder == folder
    assert [again.corpus.passage(r) for r in range(len(again.corpus))] == rows


def test_one_passage_changed_between_the_sampled_blocks_is_stored_again(tmp_path: Path, caplog: Any) -> None:
    """Same size, sampled checksum unchanged: the old check (sizes + 16 sampled blocks) used the edited text."""
    reader = LocalReader(str(XQUAD_SENT / "th"), "th", cache_dir=str(tmp_path / "cache"))
    corpus = reader.load("train").corpus
    arrow = corpus.folder / ARROW_FILE
    data = arrow.read_bytes()
    rows = [corpus.passage(r) for r in range(len(corpus))]
    for passage in rows:
        text = passage.text.encode()
        at = data.find(text)
        digits = [at + i for i, byte in enumerate(text) if chr(byte).isdigit()]
        if at >= 0 and digits and _unsampled(arrow, digits[0], digits[0] + 1):
            break
    else:
        pytest.fail("no passage with a digit outside the sampled blocks")
    _overwrite(arrow, digits[0], b"7" if data[digits[0]] != ord("7") else b"3")
    assert _recorded_sample(corpus.folder / "meta.json", ARROW_FILE) == cache.sample_digest(arrow)
    caplog.clear()
    again = LocalReader(str(XQUAD_SENT / "th"), "th", cache_dir=str(tmp_path / "cache")).load("train").corpus
    assert (
        f"{arrow} does not hold the bytes that were written" in caplog.text
        and "storing the corpus again" in caplog.text
    )
    assert [again.passage(r) for r in range(len(again))] == rows


def test_a_corpus_is_keyed_by_content_not_by_path_or_time(tmp_path: Path) -> None:
    source = tmp_path / "a" / "th"
    shutil.copytree(XQUAD_SENT / "th", source)
    first = LocalReader(str(source), "th", cache_dir=str(tmp_path / "cache")).load("train").corpus
    moved = tmp_path / "b" / "th"
    shutil.copytree(source, moved)
    os.utime(moved / "corpus.jsonl", (1, 1))
    assert LocalReader(str(moved), "th", cache_dir=str(tmp_path / "cache")).load("train").corpus.folder == first.folder
    lines = (moved / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[0])
    record["text"] = record["text"][::-1]  # same size, edited text
    lines[0] = json.dumps(record, ensure_ascii=False)
    (moved / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.utime(moved / "corpus.jsonl", (1, 1))
    edited = LocalReader(str(moved), "th", cache_dir=str(tmp_path / "cache")).load("train").corpus
    assert edited.folder != first.folder and edited.fingerprint() != first.fingerprint()


# ---- pools, teacher scores, BM25 index ----------------------------------------------------------------------


def _ensure(cfg: Any) -> None:
    """Build the composed config's model where its group says how."""
    from mdr.utils.instantiate import ensure_model_files

    model = build_spec(cfg).model
    ensure_model_files(model.name, model.name_or_path, model.build)


def _no_encoder(name: str) -> Any:
    raise AssertionError("no encoder is needed for BM25 pools")


@pytest.fixture
def thai_train(tmp_path: Path) -> RetrievalSplit:
    return LocalReader(str(XQUAD_SENT / "th"), "th", cache_dir=str(tmp_path / "corpora")).load("train")


def test_a_pool_file_cut_in_half_is_mined_again(thai_train: RetrievalSplit, tmp_path: Path) -> None:
    settings = PoolSettings(source="bm25", backend="bm25s", depth=20)
    key = pool_key(settings, "th", tmp_path)
    pools = mine(settings, thai_train, "th", "th", tmp_path, _no_encoder, key=key)
    (pool_file,) = (tmp_path / "pools").glob("th-bm25-*.jsonl")
    _cut_lines(pool_file)
    # old code: half the queries, a warning
    again = mine(settings, thai_train, "th", "th", tmp_path, _no_encoder, key=key)
    assert again.candidates == pools.candidates and again.positive_scores == pools.positive_scores
    assert len(again.candidates) == len(thai_train.queries)


def test_a_garbled_bm25_index_is_rebuilt(thai_train: RetrievalSplit, tmp_path: Path, caplog: Any) -> None:
    fresh = bm25s_search(thai_train, 20, cache_dir=tmp_path / "fresh")
    bm25s_search(thai_train, 20, cache_dir=tmp_path)
    (data,) = (tmp_path / "bm25").glob("*/data.npy")
    _garble(data)
    again = bm25s_search(thai_train, 20, cache_dir=tmp_path)  # old code: other scores, no message
    assert again == fresh
    assert "does not hold the bytes that were written" in caplog.text and "rebuilding" in caplog.text
    _garble(data)
    with pytest.raises(CacheError, match=rf"{data}.*delete {data.parent}"):  # opened alone: the file is named
        mdr.mining.bm25.BM25Index.load(data.parent, "full")


@pytest.fixture
def tiny_teacher(tiny_model: Path) -> Any:
    calls: list[int] = []

    def load() -> tuple[BiEncoder, Any, str]:
        calls.append(1)
        return BiEncoder.from_pretrained(tiny_model, TINY_SETTINGS), load_tokenizer(tiny_model), str(tiny_model)

    load.calls = calls  # type: ignore[attr-defined]
    return load


def test_teacher_scores_cut_in_half_are_computed_again(tiny_teacher: Any, tmp_path: Path) -> None:
    split = _split()
    settings = DenoiseSettings(enabled=True, relative_margin=0.05)
    first = denoise_pools(POOLS, split, "th", settings, tiny_teacher, tmp_path, device="cpu")
    (scores,) = (tmp_path / "pools").glob("th-teacher-*.jsonl")
    _cut_lines(scores)  # q1's line stays, q2's is gone
    again = denoise_pools(POOLS, split, "th", settings, tiny_teacher, tmp_path, device="cpu")
    # old code: q2 kept its whole pool, counted as 'without a judged positive', and the run was still 'denoised'
    assert not again.denoise.from_cache and again.denoise.without_positive == 0
    assert dict(again) == dict(first) and again.denoise.dropped == first.denoise.dropped
    cached = denoise_pools(POOLS, split, "th", settings, tiny_teacher, tmp_path, device="cpu")
    assert cached.denoise.from_cache and dict(cached) == dict(first)


def test_a_moved_teacher_folder_keeps_its_scores_and_an_edited_one_does_not(tiny_model: Path, tmp_path: Path) -> None:
    from mdr.mining.denoise import teacher_identity

    encoder = BiEncoder.from_pretrained(tiny_model, TINY_SETTINGS)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert teacher_identity(encoder, str(copy), tmp_path) == teacher_identity(encoder, str(tiny_model), tmp_path)
    _garble(copy / "model.safetensors", 0.9)
    assert teacher_identity(encoder, str(copy), tmp_path) != teacher_identity(encoder, str(tiny_model), tmp_path)


# ---- embedding shards -----------------------------------------------------------------------------------------


def test_a_garbled_embedding_shard_is_encoded_again(tmp_path: Path, caplog: Any) -> None:
    shards = EmbeddingShards(tmp_path, ShardPlan(num_rows=40, shard_rows=20), identity="x")
    for shard in (0, 1):
        array, tmp = shards.create(shard, 8)
        array[:] = np.arange(20 * 8, dtype=np.float32).reshape(20, 8) + shard
        shards.commit(shard, array, tmp)
    assert shards.is_done(0) and shards.is_done(1)
    _garble(shards.array_path(1))  # a kill or a bad block after the JSON was written; same size, same shape
    assert shards.is_done(0) and not shards.is_done(1)  # old code: reused (MRR .0102, no message)
    assert "embedding shard 1 is not what was written" in caplog.text


# ---- built models ---------------------------------------------------------------------------------------------


def test_a_full_disk_while_building_the_tiny_model_leaves_nothing_and_the_next_build_clears_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import BertModel

    from mdr.models.builders import build_tiny_bert

    out = tmp_path / "models" / "tiny-bert"
    corpus_glob = str(XQUAD_SENT / "th" / "corpus.jsonl")

    def full_disk(self: Any, *args: Any, **kwargs: Any) -> None:
        (Path(args[0]) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(BertModel, "save_pretrained", full_disk)
        with pytest.raises(OSError, match="No space"):
            build_tiny_bert(str(out), corpus_glob, vocab_size=300)
    assert sorted(p.name for p in out.parent.iterdir()) == [], "old code left models/.tiny-bert.<random>/"
    # leftovers of killed builds (an older mdr's mkdtemp name, a dead pid of this host) go with the next build
    (out.parent / ".tiny-bert.ab12cd34").mkdir()
    (out.parent / f".tiny-bert.tmp-{cache.HOST}-999999999").mkdir()
    build_tiny_bert(str(out), corpus_glob, vocab_size=300)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny-bert"]
    assert (out / ".manifest.json").is_file()


def test_a_truncated_tiny_model_is_built_again(make_cfg: Any, tmp_path: Path) -> None:
    cfg = make_cfg(f"paths.cache_dir={tmp_path}", "model.build.corpus_glob=" + str(XQUAD_SENT / "th" / "corpus.jsonl"))
    _ensure(cfg)
    weights = Path(cfg.model.name_or_path) / "model.safetensors"
    whole = weights.read_bytes()
    _cut(weights)  # old code: SafetensorError 'incomplete metadata', no file named, never rebuilt
    _ensure(cfg)
    assert weights.read_bytes() == whole  # the build is deterministic


def test_a_weight_matrix_zeroed_between_the_sampled_blocks_is_built_again(
    make_cfg: Any, tmp_path: Path, caplog: Any
) -> None:
    """The old check read 16 blocks of 4 KiB: a zeroed 256 x 256 matrix between them was used as it was."""
    cfg = make_cfg(f"paths.cache_dir={tmp_path}", "model.build.corpus_glob=" + str(XQUAD_SENT / "th" / "corpus.jsonl"))
    _ensure(cfg)
    folder = Path(cfg.model.name_or_path)
    weights = folder / "model.safetensors"
    whole = weights.read_bytes()
    header = int.from_bytes(whole[:8], "little")
    tensors = json.loads(whole[8 : 8 + header])
    spans = [
        (8 + header + info["data_offsets"][0], 8 + header + info["data_offsets"][1])
        for name, info in tensors.items()
        if name != "__metadata__" and len(info["shape"]) == 2 and info["shape"][0] == info["shape"][1]
    ]
    start, end = next(span for span in spans if _unsampled(weights, *span))
    _overwrite(weights, start, bytes(end - start))
    assert _recorded_sample(folder / ".manifest.json", "model.safetensors") == cache.sample_digest(weights)
    caplog.clear()
    _ensure(cfg)
    assert f"{weights} does not hold the bytes that were written (SHA-256 differs)" in caplog.text
    assert weights.read_bytes() == whole  # built again (the build is deterministic)


def test_a_file_over_the_full_check_budget_is_sampled_and_the_log_says_so(
    make_cfg: Any, tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(f"paths.cache_dir={tmp_path}", "model.build.corpus_glob=" + str(XQUAD_SENT / "th" / "corpus.jsonl"))
    _ensure(cfg)
    folder = Path(cfg.model.name_or_path)
    weights, tokenizer = folder / "model.safetensors", folder / "tokenizer.json"
    monkeypatch.setattr(cache, "FULL_CHECK_BYTES", 1 << 20)  # the weights (MBs) over it, the rest under it
    assert 0 < tokenizer.stat().st_size < 1 << 20 < weights.stat().st_size
    caplog.set_level("INFO")
    assert cache.check_folder(folder) is None
    assert f"{weights} (" in caplog.text and "checked by its size and a sampled checksum only" in caplog.text
    assert "MDR_VERIFY_CACHES=full reads every byte" in caplog.text and str(tokenizer) not in caplog.text

    def flip(path: Path) -> None:  # one byte between the sampled blocks
        middle = path.stat().st_size // 2 + cache.SAMPLE_BYTES // 2
        assert _unsampled(path, middle, middle + 1)
        _overwrite(path, middle, bytes([path.read_bytes()[middle] ^ 1]))

    flip(weights)
    assert cache.check_folder(folder) is None, "over the budget: sampled"
    monkeypatch.setenv("MDR_VERIFY_CACHES", "full")
    assert cache.check_folder(folder) == f"{weights} does not hold the bytes that were written (SHA-256 differs)"
    monkeypatch.delenv("MDR_VERIFY_CACHES")
    flip(weights)  # back as built
    flip(tokenizer)  # under the budget: every byte is checked
    assert cache.check_folder(folder) == f"{tokenizer} does not hold the bytes that were written (SHA-256 differs)"


@pytest.mark.parametrize("value", ["1", "true", "yes", "sample"])
def test_an_unknown_verify_setting_is_refused_before_any_work(
    make_cfg: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    """``MDR_VERIFY_CACHES=1`` (or true) was silently ignored: only ``full`` changed anything."""
    from mdr.data.schema import DataError

    cfg = make_cfg()
    for accepted in ("", "auto", "full", "FULL"):
        monkeypatch.setenv("MDR_VERIFY_CACHES", accepted)
        build_spec(cfg)
    monkeypatch.setenv("MDR_VERIFY_CACHES", value)
    with pytest.raises(DataError, match=rf"MDR_VERIFY_CACHES='{value}': expected auto .* or full"):
        build_spec(cfg)
    with pytest.raises(cache.SettingError, match="MDR_VERIFY_CACHES"):
        cache.verify_level("auto")
    monkeypatch.setenv("MDR_VERIFY_CACHES", "full")
    corpus = LocalReader(str(XQUAD_SENT / "th"), "th", cache_dir=str(tmp_path / "cache")).load("train").corpus
    arrow = corpus.folder / ARROW_FILE
    stamp = arrow.stat().st_mtime_ns
    monkeypatch.setenv("MDR_VERIFY_CACHES", value)  # outside a run (no validation): an error, never a rebuild
    with pytest.raises(cache.SettingError, match="MDR_VERIFY_CACHES"):
        LocalReader(str(XQUAD_SENT / "th"), "th", cache_dir=str(tmp_path / "cache")).load("train")
    assert arrow.stat().st_mtime_ns == stamp


# ---- cached stages --------------------------------------------------------------------------------------------


class _Encoder:
    """Stands in for a BiEncoder: saves a weights file whose bytes say which fit made it."""

    def __init__(self, label: str) -> None:
        self.label = label

    def save_pretrained(self, out: Path, tokenizer: Any) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(self.label.encode() * 4096)
        (out / SETTINGS_FILE).write_text("{}")


def _fake_training(monkeypatch: pytest.MonkeyPatch, fits: list[str]) -> None:
    """Stage training without a model: ``fit`` records ``<folder>:<qrels>`` in ``fits`` and labels the encoder."""

    def fit(spec: Any, stage: Any, encoder: Any, tokenizer: Any, split: Any, pools: Any, out: Path) -> dict[str, Any]:
        fits.append(f"{out.name}:{len(split.qrels)}")
        encoder.label = f"{out}:{len(fits)}"
        trainer = SimpleNamespace(is_global_zero=True, world_size=1)
        return {"trainer": trainer, "summary": {"train_queries": len(split.queries)}}

    monkeypatch.setattr(training, "fit", fit)
    monkeypatch.setattr(training, "load_encoder", lambda model, start=None: (_Encoder("start"), None))
    monkeypatch.setattr(training, "negative_pools", lambda spec, negatives, split, language: NegativePools())


def _statuses(result: Any) -> list[str]:
    return [record["status"] for record in result.extra["schedule"]["stages"]]


def test_a_cached_stage_retrains_when_its_training_data_changes_and_is_reused_when_moved(
    make_cfg: Any, tiny_model: Path, tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data" / "xquad" / "xquad-para"
    for code in ("en", "th"):
        shutil.copytree(DATA_DIR / "xquad" / "xquad-para" / code, data / code)

    def cfg(data_dir: Path, cache_dir: Path) -> Any:
        return make_cfg(
            "stage=english_then_target",
            f"paths.data_dir={data_dir}",
            f"paths.cache_dir={cache_dir}",
            f"model.name_or_path={tiny_model}",
            f"model.build.out_dir={tiny_model}",
            "train.save_encoder=false",
        )

    fits: list[str] = []
    _fake_training(monkeypatch, fits)
    first = cfg(tmp_path / "data", tmp_path / "cache")
    assert _statuses(run_schedule(build_spec(first), tmp_path / "out1")) == ["trained", "run"]
    assert _statuses(run_schedule(build_spec(first), tmp_path / "out2")) == ["reused", "run"]
    digest = stage_keys(build_spec(first))[0][1]

    # a moved data folder and a copied cache: same content, same key, reused
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    shutil.copytree(tmp_path / "cache", tmp_path / "cache2")
    moved = cfg(tmp_path / "moved", tmp_path / "cache2")
    assert stage_keys(build_spec(moved))[0][1] == digest
    assert _statuses(run_schedule(build_spec(moved), tmp_path / "out3")) == ["reused", "run"]

    # the English qrels edited (docids shifted by 7 lines): old code reused the stage (MRR .2972 vs .1769)
    qrels = data / "en" / "qrels" / "train.txt"
    lines = qrels.read_text().splitlines()
    docids = [line.split()[2] for line in lines]
    shifted = docids[7:] + docids[:7]
    qrels.write_text("".join(f"{' '.join(line.split()[:2])} {d} 1\n" for line, d in zip(lines, shifted)))
    edited = cfg(tmp_path / "data", tmp_path / "cache")
    assert stage_keys(build_spec(edited))[0][1] != digest
    fits.clear()
    assert _statuses(run_schedule(build_spec(edited), tmp_path / "out4")) == ["trained", "run"]
    assert len(fits) == 2

    # a truncated stage encoder: trained again, with the file named in the log
    stage = tmp_path / "cache" / "stages" / stage_keys(build_spec(edited))[0][1]
    weights = stage / "encoder" / "model.safetensors"
    _cut(weights)
    fits.clear()
    caplog.clear()
    assert _statuses(run_schedule(build_spec(edited), tmp_path / "out5")) == ["trained", "run"]
    assert f"{weights} has" in caplog.text, "the log names the broken file"
    assert not list(stage.glob(".encoder*")), "no staging or broken folder is left"

    # a byte flipped between the sampled blocks (same size, same sampled checksum): old code reused it
    middle = weights.stat().st_size // 2 + cache.SAMPLE_BYTES
    assert _unsampled(weights, middle, middle + 1)
    _overwrite(weights, middle, bytes([weights.read_bytes()[middle] ^ 0x01]))
    assert _recorded_sample(weights.parent / ".manifest.json", weights.name) == cache.sample_digest(weights)
    fits.clear()
    caplog.clear()
    assert _statuses(run_schedule(build_spec(edited), tmp_path / "out6")) == ["trained", "run"]
    assert f"{weights} does not hold the bytes that were written" in caplog.text


def test_the_stage_key_holds_the_starting_model_weights_not_its_path(
    make_cfg: Any, tiny_model: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "tiny-copy"
    shutil.copytree(tiny_model, copy)

    def digests(model: Path) -> list[str]:
        cfg = make_cfg("stage=english_then_target", f"model.name_or_path={model}", f"model.build.out_dir={model}")
        return [d for _, d in stage_keys(build_spec(cfg), content=False)]

    assert digests(copy) == digests(tiny_model)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(copy / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert digests(copy)[0] != digests(tiny_model)[0]


def test_the_stage_key_leaves_out_the_settings_a_run_folder_leaves_out(make_cfg: Any) -> None:
    """Settings that change no weight (the token cache, freed-memory reuse, workers) must not re-train a cached stage,
    nor make a stage cached before they existed a different one."""

    def digests(*overrides: str) -> list[str]:
        cfg = make_cfg("stage=english_then_target", *overrides)
        return [d for _, d in stage_keys(build_spec(cfg), content=False)]

    plain = digests()
    assert digests("train.token_cache=0", "train.cpu_malloc_retain_mb=0", "train.num_workers=2") == plain
    (first, _), _ = stage_keys(build_spec(make_cfg("stage=english_then_target")), content=False)
    assert not {"token_cache", "cpu_malloc_retain_mb", "num_workers"} & set(first["train"]), "as a key made before them"
    assert digests("train.weight_decay=0.02")[0] != plain[0]


# ---- locks and staging folders (issue 16 defect 7) ------------------------------------------------------------


def _contend(lock: Path, hold: float = 0.3) -> list[str]:
    """Two threads take ``lock``; returns the order of enter/leave events."""
    events: list[str] = []

    def worker(name: str) -> None:
        with cache_lock(lock):
            events.append(f"{name}+")
            time.sleep(hold)
            events.append(f"{name}-")

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=30)
    return events


def test_locks_hold_where_flock_raises_enosys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_flock(handle: Any, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre without -o flock

    monkeypatch.setattr(cache.fcntl, "flock", no_flock)
    assert _contend(tmp_path / "x.lock") == ["a+", "a-", "b+", "b-"]  # old code: OSError [Errno 38]
    assert not (tmp_path / "x.lock.owner").exists()
    # the pool cache takes the same lock
    from mdr.mining.pools import RawPools, cached

    pools = cached(tmp_path / "pools" / "p.jsonl", lambda: RawPools({"q": [("d", 1.0)]}))
    assert pools.candidates == {"q": [("d", 1.0)]}


def test_locks_hold_where_flock_is_node_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BeeGFS / NFS ``nolock``: flock succeeds for everyone; the owner file still keeps one holder."""
    monkeypatch.setattr(cache.fcntl, "flock", lambda handle, operation: None)
    assert _contend(tmp_path / "x.lock") == ["a+", "a-", "b+", "b-"]


def test_a_run_folder_lock_fails_fast_and_runs_unlocked_where_flock_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``run_folder.exclusive`` shares the cache's flock: busy -> RunFolderConflict at once, no flock -> a warning."""
    from mdr.run_folder import RunFolderConflict, exclusive

    with exclusive(tmp_path), pytest.raises(RunFolderConflict, match="in use by another process"):
        with exclusive(tmp_path):
            pass
    with pytest.raises(cache.LockBusy), exclusive(tmp_path):  # the run's own LockBusy is not a conflict
        raise cache.LockBusy("a stage")
    unlocked = [errno.ENOSYS, errno.EIO]
    monkeypatch.setattr(cache.fcntl, "flock", lambda h, o: (_ for _ in ()).throw(OSError(unlocked[0], "no")))
    for code in list(unlocked):
        unlocked[0] = code
        with exclusive(tmp_path), exclusive(tmp_path):  # both run, unlocked
            pass
        assert f"cannot lock {tmp_path} ([Errno {code}] no); going on without a lock" in caplog.text


def test_a_dead_holders_lock_is_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    owner = tmp_path / "x.lock.owner"
    owner.write_text(json.dumps({"host": cache.HOST, "pid": 999999999, "token": "gone"}))
    with cache_lock(tmp_path / "x.lock"):  # same host, pid gone: taken over at once
        assert json.loads(owner.read_text())["pid"] == os.getpid()
    # another host's holder without a heartbeat: taken over after MDR_LOCK_STALE_SECONDS
    monkeypatch.setenv("MDR_LOCK_STALE_SECONDS", "0.5")
    owner.write_text(json.dumps({"host": "other-node", "pid": 1, "token": "far"}))
    started = time.monotonic()
    with cache_lock(tmp_path / "x.lock"):
        assert json.loads(owner.read_text())["pid"] == os.getpid()
    assert time.monotonic() - started >= 0.5
    # ... but not while its heartbeat goes on
    owner.write_text(json.dumps({"host": "other-node", "pid": 1, "token": "alive"}))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.1):
            os.utime(owner)

    beating = threading.Thread(target=beat)
    beating.start()
    entered = threading.Event()

    def wait_for_it() -> None:
        with cache_lock(tmp_path / "x.lock"):
            entered.set()

    waiter = threading.Thread(target=wait_for_it, daemon=True)
    waiter.start()
    try:
        assert not entered.wait(1.5), "a live holder on another node lost its lock"
    finally:
        stop.set()
        beating.join()
    assert entered.wait(5), "once its heartbeat stopped, the lock was taken over"
    waiter.join(timeout=5)
    assert not owner.exists()


def test_a_caller_that_does_not_wait_takes_over_a_lock_whose_heartbeat_stopped_long_ago(tmp_path: Path) -> None:
    """``run.stages_only`` asks without waiting: a dead host's lock is judged by the same heartbeat rule."""
    owner = tmp_path / "x.lock.owner"
    owner.write_text(json.dumps({"host": "other-node", "pid": 1, "token": "alive"}))
    with pytest.raises(cache.LockBusy):  # its heartbeat is fresh: a live holder
        with cache_lock(tmp_path / "x.lock", wait=False):
            pass
    long_ago = time.time() - 2 * cache.stale_seconds()
    os.utime(owner, (long_ago, long_ago))
    with cache_lock(tmp_path / "x.lock", wait=False):  # old code: LockBusy on every call, forever
        assert json.loads(owner.read_text())["pid"] == os.getpid()
    assert not owner.exists()


def test_stale_build_cleanup_never_removes_a_live_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live_here = tmp_path / f"c.tmp-{cache.HOST}-{os.getppid()}"
    dead_here = tmp_path / f"c.tmp-{cache.HOST}-999999999"
    other_node = tmp_path / "c.tmp-node17-4242"
    for folder in (live_here, dead_here, other_node):
        folder.mkdir()
    monkeypatch.setenv("MDR_CACHE_LOCK", "flock")  # node-local at worst: another node's build is never touched
    assert remove_stale_builds(tmp_path, "c.tmp-*") == 1
    assert live_here.is_dir() and not dead_here.exists() and other_node.is_dir()
    monkeypatch.setenv("MDR_CACHE_LOCK", "auto")  # owner-file locks hold across nodes: under the lock it is a leftover
    assert remove_stale_builds(tmp_path, "c.tmp-*") == 1
    assert live_here.is_dir() and not other_node.exists()
    assert staging_name(".encoder") == f".encoder.tmp-{cache.HOST}-{os.getpid()}"  # two jobs never share one


def test_a_bad_lock_setting_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDR_CACHE_LOCK", "sometimes")
    with pytest.raises(CacheError, match="MDR_CACHE_LOCK"):
        with cache_lock(tmp_path / "x.lock"):
            pass
    monkeypatch.setenv("MDR_CACHE_LOCK", "flock")
    monkeypatch.setattr(cache.fcntl, "flock", lambda h, o: (_ for _ in ()).throw(OSError(errno.ENOSYS, "no")))
    with pytest.raises(CacheError, match="MDR_CACHE_LOCK=flock but this file system has no flock"):
        with cache_lock(tmp_path / "x.lock"):
            pass


def test_a_model_folder_of_the_users_is_never_checked_against_a_build_manifest(
    make_cfg: Any, tiny_model: Path, tmp_path: Path
) -> None:
    mine_ = tmp_path / "my-model"
    shutil.copytree(tiny_model, mine_, ignore=shutil.ignore_patterns(".manifest.json"))
    _ensure(make_cfg(f"model.name_or_path={mine_}"))  # model=tiny builds elsewhere
    assert sorted(p.name for p in mine_.iterdir()) == sorted(p.name for p in tiny_model.iterdir() if p.name[0] != ".")


def test_the_stage_key_holds_a_dense_miners_encoder_by_its_weights_not_its_path(
    make_cfg: Any, tiny_model: Path, tmp_path: Path
) -> None:
    encoder = tmp_path / "miner"
    shutil.copytree(tiny_model, encoder)

    def digests(folder: Path) -> list[str]:  # the English stage inherits the run's negatives, miner included
        cfg = make_cfg("stage=english_then_target", "negatives=dense", f"negatives.pool.encoder={folder}")
        return [d for _, d in stage_keys(build_spec(cfg), content=False)]

    before = digests(encoder)
    moved = tmp_path / "moved-miner"
    shutil.copytree(encoder, moved)
    assert digests(moved) == before, "a moved or copied encoder is the same miner"
    (encoder / "model.safetensors").write_bytes((encoder / "model.safetensors").read_bytes()[:-8] + b"retrain!")
    assert digests(encoder)[0] != before[0], "a retrained miner must not reuse stages mined with the old one"
