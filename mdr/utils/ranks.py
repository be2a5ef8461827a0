"""Which process of a distributed job this is, read from the launcher's environment variables.

Lightning's own launcher and torchrun set ``LOCAL_RANK``; a SLURM task (srun, submitit) has ``SLURM_LOCALID`` and
no ``LOCAL_RANK`` until Lightning's trainer starts. Code that runs before the trainer (mining, denoising) reads
them here, so every task of a node picks its own GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def local_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's index on its node: ``LOCAL_RANK``, else ``SLURM_LOCALID``, else 0."""
    env = os.environ if environ is None else environ
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = env.get(name, "")
        if value.strip():
            return int(value)
    return 0


def cuda_device(environ: Mapping[str, str] | None = None) -> str:
    """``cuda:<local rank mod visible GPUs>`` when CUDA is available, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank(environ) % torch.cuda.device_count()}"
    return "cpu"
