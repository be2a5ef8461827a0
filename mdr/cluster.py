"""Hydra callback: size a SLURM sweep's jobs from the trainer, and refuse a sweep that cannot run, before any job.

``trainer=ddp trainer.devices=8`` is the one override for 8 GPUs on a node, ``trainer.num_nodes=2`` the one for two
nodes: ``conf/launcher/slurm.yaml`` takes ``tasks_per_node`` and ``nodes`` from them, and :class:`CheckLaunch` fills
``gpus_per_node`` (GPU trainers) and ``mem_gb`` (:data:`MEM_GB_PER_TASK` per task) where they are left null, and
refuses explicit values that contradict the trainer, naming the keys. A local launcher with more than one process
per node is refused (:data:`mdr.validation.LOCAL_DDP_MULTIRUN`). Every job checks the same again against its own
SLURM allocation and CUDA devices (:func:`mdr.validation.launch_problems`) before it reads any data.
"""

from __future__ import annotations

import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from mdr.utils.logging import get_logger

log = get_logger(__name__)

MEM_GB_PER_TASK = 16
"""GB of memory asked per task (rank) when ``hydra.launcher.mem_gb`` is null: x tasks_per_node per node."""
EXIT_REFUSED = 2


def sweep_problems(config: DictConfig, environ: dict[str, str] | None = None) -> list[str]:
    """What is wrong with launching this multirun (``config``: the sweep's config, ``hydra`` node included); fills
    the SLURM launcher's ``gpus_per_node`` and ``mem_gb`` where they are null."""
    from mdr.validation import GPU_ACCELERATORS, LOCAL_DDP_MULTIRUN, processes_per_node, slurm_tasks

    trainer = OmegaConf.select(config, "trainer")
    if not isinstance(trainer, DictConfig):  # evaluate.py: one process
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
    log.info(
        "SLURM jobs: %s node(s) x %s task(s), %s GPU(s) and %s GB per node",
        launcher.nodes,
        launcher.tasks_per_node,
        launcher.get("gpus_per_node"),
        launcher.mem_gb,
    )
    return problems


class CheckLaunch(Callback):
    """At the start of a multirun: :func:`sweep_problems`, and exit with status 2 listing them before any job."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problems = sweep_problems(config)
        if problems:
            message = "the sweep was not started:\n  " + "\n  ".join(problems)
            log.error(message)
            raise SystemExit(EXIT_REFUSED)
