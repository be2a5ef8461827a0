"""GPU-cluster paths simulated on CPU (issue 16): a process group without a CPU backend, Lightning's relaunch of
``sys.argv`` under ``-m``, SLURM tasks of one job, job folder names, the GPU device of a SLURM task, and bf16."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from mdr.data.readers import LocalReader
from mdr.models.precision import bf16_supported, resolve_precision

from conftest import XQUAD_SENT


@pytest.fixture
def clean_dist_env(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Lightning's launcher writes MASTER_*, LOCAL_RANK, NODE_RANK, WORLD_SIZE into os.environ: undo it after."""
    saved = dict(os.environ)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def test_masked_total_needs_no_collective_after_fit(make_cfg, tmp_path: Path, monkeypatch, clean_dist_env) -> None:  # noqa: ANN001
    """Defect 1: after ``trainer.fit`` Lightning's teardown has moved the module to the CPU, and the NCCL group it
    made on CUDA has no CPU backend. Simulated on a 1-rank gloo DDP: once the strategy is torn down, an all-reduce
    raises what NCCL raises. The count must be summed before teardown (on_train_end)."""
    from lightning.pytorch.strategies import DDPStrategy

    from mdr.pipeline import fit, load_encoder

    torn_down: list[bool] = []
    teardown = DDPStrategy.teardown

    def mark_teardown(self) -> None:  # noqa: ANN001
        torn_down.append(True)
        teardown(self)

    real_all_reduce = dist.all_reduce

    def all_reduce(tensor: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if torn_down and tensor.device.type == "cpu":
            raise RuntimeError("No backend type associated with device type cpu")
        return real_all_reduce(tensor, *args, **kwargs)

    monkeypatch.setattr(DDPStrategy, "teardown", mark_teardown)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setenv("MASTER_PORT", str(29500 + os.getpid() % 2000))
    cfg = make_cfg(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "negatives.hard_proportion=0",
        "trainer.precision=32-true",
    )
    split = LocalReader(XQUAD_SENT / "th", "th").load("train")
    encoder, tokenizer = load_encoder(cfg)
    fitted = fit(cfg, encoder, tokenizer, split, {}, tmp_path / "run")
    assert torn_down, "the DDP strategy should have been torn down by fit"
    assert fitted["trainer"].world_size == 1 and fitted["summary"]["steps"] == 4
    assert fitted["summary"]["in_batch_false_negatives_masked"] >= 0


def test_auto_precision_ignores_emulated_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 10: V100 / T4 emulate bf16 (slower than fp32); ``is_bf16_supported()`` counts emulation."""
    asked: list[bool] = []

    def emulated_only(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation  # a card without native bf16: supported only when emulation counts

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulated_only)
    assert not bf16_supported("cuda")
    assert resolve_precision("auto", "gpu") == "32-true"
    assert asked and not any(asked)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # A100 / H100
    assert resolve_precision("auto", "gpu") == "bf16-mixed"


def test_dense_mining_and_denoising_use_the_slurm_tasks_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 9: submitit sets SLURM_LOCALID, not LOCAL_RANK; task 3 of a node must not mine on GPU 0."""
    from mdr.mining.denoise import default_device
    from mdr.mining.dense import mining_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert mining_device() == "cuda:3" and default_device() == "cuda:3"
    monkeypatch.setenv("LOCAL_RANK", "5")  # Lightning / torchrun's own variable wins where it is set
    assert mining_device() == "cuda:5" and default_device() == "cuda:5"


def test_dense_mining_writes_embeddings_under_the_cache_not_tmpdir(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 9: the corpus's embeddings (~100 GB for Mr. TyDi en) went to TMPDIR, a tmpfs on many nodes."""
    import mdr.mining.dense as dense
    from mdr.mining.miner import PoolSettings, mine
    from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer

    tmpdir = tmp_path / "system-tmp"
    tmpdir.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmpdir))
    folders: list[Path] = []
    real = dense.dense_retrieve

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        folder = Path(args[5])
        found = real(*args, **kwargs)
        folders.append(folder)
        assert any(folder.rglob("*")), "the shards are written here"
        return found

    monkeypatch.setattr(dense, "dense_retrieve", spy)
    split = LocalReader(XQUAD_SENT / "hi", "hi").load("train")
    cache = tmp_path / "cache"

    def load(path: str):  # noqa: ANN202
        return BiEncoder.from_pretrained(path, EncoderSettings(pooling="mean", normalize=True)), load_tokenizer(path)

    mine(PoolSettings(source="dense", depth=10, encoder=str(tiny_model)), split, "hi", "hi", cache, load, "cpu")
    assert len(folders) == 1 and folders[0].is_relative_to(cache / "tmp")
    assert not folders[0].exists(), "removed once the pool is built"
    assert not any(tmpdir.iterdir()), "nothing written to the system's temporary folder"


def _slurm_task(monkeypatch: pytest.MonkeyPatch, rank: int, restart: int = 0) -> None:
    """The environment srun gives task ``rank`` of a 2-task job (one node), as submitit starts it."""
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_NODEID": "0",
        "SLURM_RESTART_COUNT": str(restart),
    }.items():
        monkeypatch.setenv(name, value)


def test_slurm_ranks_take_rank_zeros_run_folder_decision(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Defect 3: rank 0 of a 2-task SLURM job returned ("already complete" / refused) while rank 1 skipped the
    folder check, read the data and waited for rank 0 in Lightning's init until killed."""
    from mdr import run_folder
    from mdr.pipeline import run_task
    from mdr.utils.io import atomic_write_json

    ran: list[int] = []

    def task(cfg) -> dict:  # noqa: ANN001
        ran.append(int(os.environ["SLURM_PROCID"]))
        payload = {"metrics": {"mrr@100": 0.5}} if ran[-1] == 0 else {}
        if payload:
            atomic_write_json(Path(cfg.paths.output_dir) / "metrics.json", payload)
        return payload

    cfg = make_cfg("seed=7")
    _slurm_task(monkeypatch, 0)
    assert run_task(cfg, task)["metrics"]["mrr@100"] == 0.5
    _slurm_task(monkeypatch, 1)
    assert run_task(cfg, task) == {} and ran == [0, 1], "the first launch: both ranks run"

    _slurm_task(monkeypatch, 0, restart=1)  # the finished sweep again (a requeue or a rerun)
    assert run_task(cfg, task)["metrics"]["mrr@100"] == 0.5
    _slurm_task(monkeypatch, 1, restart=1)
    assert run_task(cfg, task) == {}
    assert ran == [0, 1], "rank 1 returns too: rank 0 found the run complete"

    changed = make_cfg("seed=8")  # another config into the finished folder: refused on both ranks
    _slurm_task(monkeypatch, 0, restart=2)
    with pytest.raises(run_folder.RunFolderConflict):
        run_task(changed, task)
    _slurm_task(monkeypatch, 1, restart=2)
    with pytest.raises(run_folder.RunFolderRefused, match="rank 0 refused"):
        run_task(changed, task)
    assert ran == [0, 1]

    _slurm_task(monkeypatch, 1, restart=3)  # rank 0 never got to the folder: a clear error, not a hang
    monkeypatch.setattr(run_folder, "RANK_WAIT_S", 0.2)
    with pytest.raises(TimeoutError, match="recorded no decision"):
        run_task(cfg, task)
    assert ran == [0, 1]
