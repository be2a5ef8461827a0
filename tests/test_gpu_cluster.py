"""GPU-cluster paths simulated on CPU (issue 16): a process group without a CPU backend, Lightning's relaunch of
``sys.argv`` under ``-m``, SLURM tasks of one job, job folder names, the GPU device of a SLURM task, and bf16."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

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

    from mdr.training import fit, load_encoder
    from mdr.validation import build_spec

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
    spec = build_spec(cfg)
    encoder, tokenizer = load_encoder(spec.model)
    fitted = fit(spec, spec.schedule.stages[-1], encoder, tokenizer, split, {}, tmp_path / "run")
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
    from mdr.training import pool_key

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

    settings = PoolSettings(source="dense", depth=10, encoder=str(tiny_model))
    mine(settings, split, "hi", "hi", cache, load, "cpu", key=pool_key(settings, "hi", cache))
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
    from mdr.lifecycle import run_task
    from mdr.utils import ranks
    from mdr.utils.io import atomic_write_json

    ran: list[int] = []

    def task(spec) -> dict:  # noqa: ANN001
        ran.append(int(os.environ["SLURM_PROCID"]))
        payload = {"metrics": {"mrr@100": 0.5}} if ran[-1] == 0 else {}
        if payload:
            atomic_write_json(Path(spec.paths.output_dir) / "metrics.json", payload)
        return payload

    two_tasks = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")  # the job's 2 tasks are its ranks
    cfg = make_cfg("seed=7", *two_tasks)
    _slurm_task(monkeypatch, 0)
    assert run_task(cfg, task)["metrics"]["mrr@100"] == 0.5
    _slurm_task(monkeypatch, 1)
    assert run_task(cfg, task) == {} and ran == [0, 1], "the first launch: both ranks run"

    _slurm_task(monkeypatch, 0, restart=1)  # the finished sweep again (a requeue or a rerun)
    assert run_task(cfg, task)["metrics"]["mrr@100"] == 0.5
    _slurm_task(monkeypatch, 1, restart=1)
    assert run_task(cfg, task) == {}
    assert ran == [0, 1], "rank 1 returns too: rank 0 found the run complete"

    changed = make_cfg("seed=8", *two_tasks)  # another config into the finished folder: refused on both ranks
    _slurm_task(monkeypatch, 0, restart=2)
    with pytest.raises(run_folder.RunFolderConflict):
        run_task(changed, task)
    _slurm_task(monkeypatch, 1, restart=2)
    with pytest.raises(run_folder.RunFolderRefused, match="rank 0 refused"):
        run_task(changed, task)
    assert ran == [0, 1]

    _slurm_task(monkeypatch, 1, restart=3)  # rank 0 never got to the folder: a clear error, not a hang
    monkeypatch.setattr(ranks, "RANK_WAIT_S", 0.2)
    with pytest.raises(TimeoutError, match="recorded no decision"):
        run_task(cfg, task)
    assert ran == [0, 1]


def test_a_rank_zero_failure_after_deciding_to_run_ends_the_other_ranks(
    make_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:  # noqa: ANN001
    """Rank 0 decided to run, then failed (bad data, a crash before Lightning's init): rank 1 had followed the
    "run" decision and waited in Lightning's process group until its timeout. Now rank 0 records the failure, and
    rank 1 stops with rank 0's error: at once if it has not started, else from its watcher thread."""
    import subprocess
    import sys
    import time

    from mdr.lifecycle import run_task

    def failing(spec) -> dict:  # noqa: ANN001
        raise ValueError("queries.jsonl line 3: no text")

    cfg = make_cfg("seed=9", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    out = Path(cfg.paths.output_dir)
    _slurm_task(monkeypatch, 0)
    with pytest.raises(ValueError):
        run_task(cfg, failing)
    _slurm_task(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="rank 0 failed .*queries.jsonl line 3"):
        run_task(cfg, lambda spec: {})  # not started yet: it does not start

    # a rank 1 already in its task (standing in for Lightning's rendezvous) when rank 0 fails: it exits, with the error
    key_env = {**os.environ, "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    decisions = out / ".ranks"
    decisions.mkdir(parents=True, exist_ok=True)
    decision = decisions / "slurm-77-0-0.json"
    decision.write_text('{"decision": "run", "message": ""}')
    code = (
        "import time\nfrom pathlib import Path\nfrom mdr.utils import ranks\n"
        f"ranks.watch_rank_zero(Path({str(out)!r}), interval_s=0.1)\ntime.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], env=key_env, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert child.poll() is None, "a rank keeps going while rank 0 runs"
    decision.write_text('{"decision": "failed", "message": "ValueError: queries.jsonl line 3: no text"}')
    started = time.monotonic()
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 1 and time.monotonic() - started < 10
    assert "rank 0 failed (ValueError: queries.jsonl line 3: no text); this rank stops" in stderr


def _sweep_config(*overrides: str):  # noqa: ANN202
    """The multirun's config with its ``hydra`` node, as a Hydra callback gets it at ``on_multirun_start``."""
    from hydra import compose, initialize_config_dir

    from conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_one_override_sizes_the_slurm_jobs() -> None:
    """Defect 5: tasks_per_node stayed 1 with trainer=ddp (Lightning refused it at fit, after mining), num_nodes was
    no trainer key, and 16 GB per node was the memory of 8 ranks."""
    from mdr.cluster import MEM_GB_PER_TASK, sweep_problems

    config = _sweep_config("launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2")
    assert sweep_problems(config, environ={}) == []
    launcher = config.hydra.launcher
    assert (launcher.tasks_per_node, launcher.nodes, launcher.gpus_per_node) == (8, 2, 8)
    assert launcher.mem_gb == 8 * MEM_GB_PER_TASK
    cpu = _sweep_config("launcher=slurm", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert sweep_problems(cpu, environ={}) == [] and cpu.hydra.launcher.gpus_per_node is None
    assert cpu.hydra.launcher.tasks_per_node == 2
    one = _sweep_config("launcher=slurm", "trainer=gpu", "hydra.launcher.mem_gb=40")
    assert sweep_problems(one, environ={}) == []
    assert (one.hydra.launcher.tasks_per_node, one.hydra.launcher.gpus_per_node, one.hydra.launcher.mem_gb) == (
        1,
        1,
        40,
    )


def test_slurm_settings_that_contradict_the_trainer_are_refused_naming_the_keys() -> None:
    from mdr.cluster import sweep_problems

    config = _sweep_config(
        "launcher=slurm",
        "trainer=ddp",
        "trainer.devices=8",
        "hydra.launcher.tasks_per_node=1",
        "hydra.launcher.nodes=2",
    )
    problems = sweep_problems(config, environ={})
    assert len(problems) == 2
    assert "hydra.launcher.tasks_per_node=1 but trainer.devices=8" in problems[0]
    assert "hydra.launcher.nodes=2 but trainer.num_nodes=1" in problems[1]
    few = _sweep_config("launcher=slurm", "trainer=ddp", "trainer.devices=4", "hydra.launcher.gpus_per_node=1")
    assert "hydra.launcher.gpus_per_node=1 is fewer than trainer.devices=4" in sweep_problems(few, environ={})[0]


def test_each_job_checks_its_slurm_allocation_and_cuda_before_reading_data(make_cfg) -> None:  # noqa: ANN001
    """Defect 5: inside the job, a mismatch with the allocation or a GPU trainer without CUDA is a config error
    naming the keys (validation), not Lightning's error at fit after mining, or a late CUDA failure."""
    from mdr.cluster import launch_problems

    def trainer(*overrides: str) -> dict:
        return OmegaConf.to_container(make_cfg(*overrides).trainer, resolve=True)

    ddp = trainer("trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2")
    env = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "train"}
    assert launch_problems(ddp, environ=env, cuda_devices=8, launcher=None) == []
    one_task = {**env, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1"}
    problems = launch_problems(ddp, environ=one_task, cuda_devices=8, launcher=None)
    assert len(problems) == 1 and "trainer.devices=8" in problems[0] and "hydra.launcher.tasks_per_node" in problems[0]
    one_node = {**env, "SLURM_NNODES": "1"}
    assert "trainer.num_nodes=2 but this SLURM job has 1 node(s)" in launch_problems(ddp, one_node, 8, None)[0]
    no_cuda = launch_problems(trainer("trainer=gpu"), environ={}, cuda_devices=0, launcher=None)
    assert len(no_cuda) == 1 and "trainer.accelerator=gpu but torch" in no_cuda[0] and "sees no CUDA" in no_cuda[0]
    assert "this node has 2 visible CUDA" in launch_problems(ddp, environ={}, cuda_devices=2, launcher=None)[0]
    assert (
        "trainer.num_nodes must be an integer >= 1" in launch_problems(trainer("trainer.num_nodes=0"), {}, 0, None)[0]
    )


def test_local_ddp_multirun_is_refused_before_any_job(make_cfg) -> None:  # noqa: ANN001
    """Defect 2: Lightning starts the extra ranks by re-running sys.argv (subprocess_script.py), which under -m is
    the whole sweep: rank 1 ran another cell than rank 0 and the table reported wrong cells. Refused up front."""
    from lightning.fabric.strategies.launchers import subprocess_script

    from mdr.cluster import launch_problems, sweep_problems

    # what Lightning would run for rank 1 from a multirun job: the sweep again
    argv = ["train.py", "-m", "trainer=ddp", "trainer.devices=2", "negatives.hard_proportion=0,1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", argv)
        assert "-m" in subprocess_script._basic_subprocess_cmd()
    config = _sweep_config("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    problems = sweep_problems(config, environ={})
    assert len(problems) == 1 and "launcher=slurm" in problems[0] and "without -m" in problems[0]
    joblib = _sweep_config("launcher=joblib", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert "JoblibLauncher" in sweep_problems(joblib, environ={})[0]
    # the job checks it too (a sweep whose hydra callbacks were replaced)
    ddp = OmegaConf.to_container(make_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2").trainer)
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    assert "BasicLauncher launcher" in launch_problems(ddp, environ={}, cuda_devices=0, launcher=basic)[0]
    assert launch_problems(ddp, environ={}, cuda_devices=0, launcher=None) == [], "one cell per command: fine"
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "train"}
    assert launch_problems(ddp, environ=slurm, cuda_devices=0, launcher=basic) == [], "srun starts the ranks"


def test_local_ddp_sweep_command_exits_before_any_job(tmp_path: Path) -> None:
    """Defect 2, the command as a user types it: status 2, the advice, and no sweep folder, no job, no data read."""
    import subprocess
    import sys

    from conftest import DATA_DIR, ROOT

    sweep = tmp_path / "sweep"
    argv = ["-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data=demo"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *argv, "negatives.hard_proportion=0,1", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env={**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "launcher=slurm" in done.stdout + done.stderr and "without -m" in done.stdout + done.stderr
    assert not sweep.exists() and not (tmp_path / "cache").exists()


def test_job_folder_names_hold_no_path_and_one_spelling_per_number() -> None:
    """Defect 6 (and issue 19 item 2): ``data.queries_repo=/data/...`` split a job folder into 5 levels (the
    aggregation, globbing ``*/.hydra``, counted every cell missing) or overflowed the name; 0 and 0.0 made two."""
    from mdr.utils.job_dirs import MAX_NAME

    repo = "data.queries_repo=/data/mrtydi/queries"
    names = {
        _sweep_config("data=mrtydi", repo, f"negatives.hard_proportion={p}", "seed=1").hydra.sweep.subdir
        for p in ("0", "0.0", "0.")
    }
    assert len(names) == 1, names
    name = names.pop()
    assert "/" not in name and "negatives.hard_proportion=0," in name and "data.queries_repo=queries-" in name
    other = _sweep_config("data=mrtydi", "data.queries_repo=/scratch/queries", "negatives.hard_proportion=0", "seed=1")
    assert other.hydra.sweep.subdir != name, "another path, another folder"
    half = {_sweep_config(f"negatives.hard_proportion={p}").hydra.sweep.subdir for p in ("0.5", "0.50", "5e-1")}
    assert half == {"negatives.hard_proportion=0.5"}
    long = _sweep_config("data=mrtydi", "data.queries_repo=" + "/very-long-folder-name" * 20, "seed=1").hydra.sweep
    assert "/" not in long.subdir and len(long.subdir.encode()) <= MAX_NAME
    excluded = _sweep_config("trainer=ddp", "launcher=local", "seed=1").hydra.sweep.subdir
    assert excluded == "seed=1", "hydra.job.config.override_dirname.exclude_keys still apply"
    logged = _sweep_config("logger.wandb.enabled=false", "logger.progress.every_n_steps=10", "seed=1").hydra.sweep
    assert logged.subdir == "seed=1", "logger.* settings change no result: not another job folder"
