"""Launch checks: each job's trainer on its machine (:func:`launch_problems`), a sweep's jobs (:class:`CheckLaunch`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from mdr.utils.logging import get_logger

log = get_logger(__name__)

MEM_GB_PER_TASK = 16  # GB asked per task (rank) when hydra.launcher.mem_gb is null: x tasks_per_node per node
GPU_ACCELERATORS = ("gpu", "cuda")
LOCAL_DDP_MULTIRUN = (
    "a multirun (-m) with {devices} processes per node on the {launcher} launcher: Lightning starts the extra ranks "
    "by re-running this command line, sweep and all, so they would train other cells than rank 0. Use "
    "launcher=slurm (its tasks_per_node follows trainer.devices: each task of a job is one rank of one cell), or run "
    "one cell per command without -m (python train.py trainer=ddp trainer.devices={devices} <the cell's overrides>)"
)


def processes_per_node(trainer: Mapping[str, Any], cuda_devices: int) -> int | None:
    """Processes (ranks) per node of ``trainer`` (``auto``: 1 on CPU, every visible GPU); None for bad ``devices``."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if str(devices) in ("auto", "-1"):
        accelerator = str(trainer.get("accelerator"))
        on_gpu = accelerator in GPU_ACCELERATORS or (accelerator == "auto" and cuda_devices > 0)
        return max(cuda_devices, 1) if on_gpu else 1
    return None if isinstance(devices, bool) or not isinstance(devices, int) else devices


def slurm_tasks(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(tasks per node, nodes) of this process's SLURM job step, as Lightning sees it; None outside SLURM."""
    if not environ.get("SLURM_NTASKS") or environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    nodes = int(environ.get("SLURM_NNODES") or 1)
    per_node = environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # "8(x2)" on some versions
    tasks = int(per_node) if per_node.isdigit() else max(int(environ["SLURM_NTASKS"]) // nodes, 1)
    return tasks, nodes


def launch_problems(
    trainer: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None = None,
    cuda_devices: int | None = None,
    launcher: str | None = None,
) -> list[str]:
    """Problems of ``trainer`` (None: evaluate.py) on this machine and ``launcher`` (default: Hydra's): CUDA devices,
    a SLURM job's tasks and nodes (Lightning refuses them only at ``fit``), one process per node on a local multirun."""
    if trainer is None:
        return []
    import torch

    env = os.environ if environ is None else environ
    cuda = (torch.cuda.device_count() if torch.cuda.is_available() else 0) if cuda_devices is None else cuda_devices
    problems: list[str] = []
    accelerator, devices = str(trainer.get("accelerator")), trainer.get("devices", 1)
    per_node = processes_per_node(trainer, cuda)
    if per_node is None or per_node < 1:
        problems.append(
            f"trainer.devices must be a positive number of devices, a list of device ids or auto, got {devices!r}"
        )
    nodes = trainer.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        problems.append(f"trainer.num_nodes must be an integer >= 1, got {nodes!r}")
        nodes = None
    if accelerator in GPU_ACCELERATORS:
        if cuda == 0:
            problems.append(
                f"trainer.accelerator={accelerator} but torch {torch.__version__} sees no CUDA device (CUDA build: "
                f"{torch.version.cuda}): run on a GPU node with a CUDA build of torch, or use trainer=cpu"
            )
        elif per_node is not None and per_node > cuda:
            problems.append(f"trainer.devices={devices} but this node has {cuda} visible CUDA device(s)")
    tasks = slurm_tasks(env)
    if tasks is not None and per_node is not None and nodes is not None:
        if tasks[0] != per_node:
            problems.append(
                f"trainer.devices={devices} runs {per_node} process(es) per node but this SLURM job has {tasks[0]} "
                "task(s) per node (hydra.launcher.tasks_per_node, or sbatch/srun --ntasks-per-node): they must match; "
                "launcher=slurm sets tasks_per_node from trainer.devices unless it is overridden"
            )
        if tasks[1] != nodes:
            problems.append(
                f"trainer.num_nodes={nodes} but this SLURM job has {tasks[1]} node(s) (hydra.launcher.nodes, or "
                "sbatch --nodes): they must match; launcher=slurm sets nodes from trainer.num_nodes unless overridden"
            )
    if launcher is None and in_multirun():
        launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    external = tasks is not None or "TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env
    if launcher is not None and not external and (per_node or 1) > 1 and not launcher.endswith("SlurmLauncher"):
        problems.append(LOCAL_DDP_MULTIRUN.format(devices=per_node, launcher=launcher.rsplit(".", 1)[-1]))
    return problems


def in_multirun() -> bool:
    """True inside a Hydra multirun job."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_problems(config: DictConfig, environ: dict[str, str] | None = None) -> list[str]:
    """What is wrong with launching this multirun; fills the SLURM launcher's null ``gpus_per_node`` and ``mem_gb``."""
    trainer = OmegaConf.select(config, "trainer")
    if not OmegaConf.is_dict(trainer):  # evaluate.py: one process
        trainer = OmegaConf.create({"accelerator": "cpu", "devices": 1, "num_nodes": 1})
    env = dict(os.environ) if environ is None else environ
    launcher = config.hydra.launcher
    target = str(launcher.get("_target_", ""))
    gpu = str(trainer.get("accelerator")) in GPU_ACCELERATORS
    per_node = processes_per_node(trainer, 0 if not gpu else 1)  # auto on GPUs: unknown on the submitting host
    if not target.endswith("SlurmLauncher"):
        external = slurm_tasks(env) is not None or "TORCHELASTIC_RUN_ID" in env
        if per_node is not None and per_node > 1 and not external:
            return [LOCAL_DDP_MULTIRUN.format(devices=per_node, launcher=target.rsplit(".", 1)[-1])]
        return []
    problems: list[str] = []
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if str(devices) in ("auto", "-1") and gpu:
        return [
            f"trainer.devices={devices} with launcher=slurm: give the number of GPUs per node (e.g. trainer.devices=8)"
        ]
    try:
        tasks, launcher_nodes = launcher.get("tasks_per_node"), launcher.get("nodes")
    except OmegaConfBaseException as error:  # e.g. trainer.devices=[0,1] into the integer tasks_per_node
        return [f"hydra.launcher.tasks_per_node / nodes cannot be set from trainer.devices={devices}: {error}"]
    if per_node is not None and tasks != per_node:
        problems.append(
            f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={devices} runs {per_node} process(es) per "
            "node: leave hydra.launcher.tasks_per_node unset (it follows trainer.devices) or make them equal"
        )
    if launcher_nodes != nodes:
        problems.append(
            f"hydra.launcher.nodes={launcher_nodes} but trainer.num_nodes={nodes}: leave hydra.launcher.nodes "
            "unset (it follows trainer.num_nodes) or make them equal"
        )
    gpus = launcher.get("gpus_per_node")
    if gpu and gpus is not None and per_node is not None and int(gpus) < per_node:
        problems.append(
            f"hydra.launcher.gpus_per_node={gpus} is fewer than trainer.devices={devices} GPUs per node: leave it null "
            "(it follows trainer.devices) or raise it"
        )
    if problems:
        return problems
    with read_write(config.hydra), open_dict(config.hydra):
        if gpu and gpus is None and per_node is not None:
            launcher.gpus_per_node = per_node
        if launcher.get("mem_gb") is None:
            launcher.mem_gb = MEM_GB_PER_TASK * int(tasks)
    shape = (launcher.nodes, launcher.tasks_per_node, launcher.get("gpus_per_node"), launcher.mem_gb)
    log.info("SLURM jobs: %s node(s) x %s task(s), %s GPU(s) and %s GB per node", *shape)
    return problems


class CheckLaunch(Callback):
    """At the start of a multirun: :func:`sweep_problems`, and exit with status 2 listing them before any job."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problems = sweep_problems(config)
        if problems:
            log.error("the sweep was not started:\n  " + "\n  ".join(problems))
            raise SystemExit(2)
