"""Which torch and faiss builds are installed, whether they fit the machine (docs/gpu.md: torch for CUDA 12 with
``faiss-gpu``, or ``faiss-cpu``, never both), and where a run computes. A script too (stdlib only at import)::

    python -m mdr.utils.environment check --want gpu     # the problems, one a line; exit 1 if any
    python -m mdr.utils.environment torch --want gpu     # exit 1 when the installed torch must be replaced
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12", "faiss-gpu-cu13", "faiss")
SUPPORTED_CUDA_MAJOR = 12  # faiss-gpu 1.15.1's runtime wheels
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"  # scripts/setup.sh --gpu, unless MDR_TORCH_INDEX is set
MIXED_CUDA_ENV = "MDR_ALLOW_MIXED_CUDA"  # 1: accept torch and faiss on different CUDA majors


@dataclass(frozen=True)
class Installed:
    """What an environment holds (None: torch not installed, a CPU build, faiss does not import)."""

    torch_version: str | None
    torch_cuda: str | None
    faiss_builds: tuple[str, ...]
    faiss_cuda_major: int | None
    cuda_devices: int
    faiss_gpus: int | None


def _cuda_major_of(distribution: str) -> int | None:
    """The CUDA major of ``distribution``'s ``nvidia-*-cuNN`` requirements (None: none)."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        requires = importlib.metadata.requires(distribution) or []
        return max((int(m.group(1)) for r in requires if (m := re.match(r"nvidia-[a-z-]+-cu(\d+)\b", r))), default=None)
    return None


def faiss_builds() -> tuple[str, ...]:
    """The installed distributions among :data:`FAISS_DISTRIBUTIONS`."""
    return tuple(name for name in FAISS_DISTRIBUTIONS if _version(name) is not None)


def _version(distribution: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(distribution)
    return None


def installed() -> Installed:
    """Read the current environment (imports torch and faiss)."""
    try:
        import torch
    except ImportError:
        torch_version, torch_cuda, devices = None, None, 0
    else:
        torch_version, torch_cuda = str(torch.__version__), torch.version.cuda
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    builds = faiss_builds()
    gpu_build = next((name for name in builds if name.startswith("faiss-gpu")), None)
    try:
        import faiss

        gpus: int | None = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        gpus = None
    return Installed(torch_version, torch_cuda, builds, _cuda_major_of(gpu_build) if gpu_build else None, devices, gpus)


def torch_problem(want: str, torch_version: str | None, torch_cuda: str | None) -> str | None:
    """Why the installed torch does not suit a ``want`` (``cpu`` / ``gpu``) install, or None."""
    if want == "cpu":
        return None
    if torch_version is None:
        return "torch is not installed"
    if torch_cuda is None:
        return f"torch {torch_version} is a CPU build (a CPU venv reused?): a GPU install needs a CUDA build"
    major = int(str(torch_cuda).split(".")[0])
    if major != SUPPORTED_CUDA_MAJOR and os.environ.get(MIXED_CUDA_ENV) != "1":
        return (
            f"torch {torch_version} is built for CUDA {torch_cuda}, faiss-gpu for CUDA {SUPPORTED_CUDA_MAJOR}: "
            f"install torch from {TORCH_CUDA_INDEX} (or set {MIXED_CUDA_ENV}=1 to run two CUDA stacks)"
        )
    return None


def install_problems(want: str, found: Installed) -> list[str]:
    """Everything wrong with environment ``found`` for a ``want`` (``cpu`` / ``gpu``) install; empty: fine."""
    problems = [problem] if (problem := torch_problem(want, found.torch_version, found.torch_cuda)) else []
    expected = "faiss-gpu" if want == "gpu" else "faiss-cpu"
    if len(found.faiss_builds) > 1:
        problems.append(
            f"{len(found.faiss_builds)} faiss builds installed ({', '.join(found.faiss_builds)}): they overwrite "
            f"each other's faiss/_swigfaiss.abi3.so; uninstall all of them and install {expected} alone"
        )
    elif found.faiss_builds != (expected,):
        problems.append(f"{expected} is not installed (found: {', '.join(found.faiss_builds) or 'no faiss'})")
    if found.faiss_gpus is None:
        problems.append("faiss does not import")
    if want == "gpu":
        if found.cuda_devices == 0:
            problems.append("torch sees no CUDA device: run the GPU install and its check on a GPU node")
        elif found.faiss_gpus is not None and found.faiss_gpus != found.cuda_devices:
            problems.append(f"faiss sees {found.faiss_gpus} GPUs, torch {found.cuda_devices}")
        torch_major = int(str(found.torch_cuda).split(".")[0]) if found.torch_cuda else None
        faiss_major = found.faiss_cuda_major
        if torch_major and faiss_major and torch_major != faiss_major and os.environ.get(MIXED_CUDA_ENV) != "1":
            problems.append(f"torch runs CUDA {torch_major}, faiss-gpu CUDA {faiss_major}: two CUDA stacks")
    return problems


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
        if line := next((line for line in handle if line.startswith("model name")), None):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: Any) -> str:
    """The name of torch device ``device`` (``torch.cuda.get_device_name`` or the CPU model)."""
    import torch

    device = torch.device(device)
    return str(torch.cuda.get_device_name(device)) if device.type == "cuda" else cpu_name()


def code_version() -> dict[str, Any]:
    """mdr's git commit and dirty flag (None outside git), and the torch, transformers and lightning versions."""
    root = Path(__file__).resolve().parents[2]
    commit: str | None = None
    dirty: bool | None = None
    if (root / ".git").exists():
        try:
            git = ["git", "-C", str(root)]
            options = {"capture_output": True, "text": True, "timeout": 10, "check": True}
            commit = subprocess.run([*git, "rev-parse", "HEAD"], **options).stdout.strip()
            status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], **options).stdout
            dirty = bool(status.strip())
        except (OSError, subprocess.SubprocessError):
            commit, dirty = None, None
    packages = {name: _version(name) for name in ("torch", "transformers", "lightning")}
    return {"commit": commit, "dirty": dirty, "packages": packages}


def faiss_version() -> str | None:
    """The imported faiss's version and build (``1.15.1 (faiss-gpu)``), None when faiss does not import."""
    try:
        import faiss
    except ImportError:
        return None
    builds = faiss_builds()
    return f"{faiss.__version__} ({', '.join(builds)})" if builds else str(faiss.__version__)


def main(argv: list[str] | None = None) -> int:
    """``check``: print the install's problems (exit 1 if any); ``torch``: exit 1 when torch must be replaced."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["check", "torch", "show"])
    parser.add_argument("--want", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args(argv)
    if args.what == "torch":  # torch alone: faiss may not be installed yet
        try:
            import torch

            version, cuda = str(torch.__version__), torch.version.cuda
        except ImportError:
            version, cuda = None, None
        if problem := torch_problem(args.want, version, cuda):
            print(f"[mdr] {problem}", flush=True)
        return 1 if problem else 0
    found = installed()
    if args.what == "show":
        print(json.dumps(asdict(found)))
        return 0
    problems = install_problems(args.want, found)
    for problem in problems:
        print(f"[mdr] install problem: {problem}", file=sys.stderr, flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
