"""Run a pyserini command-line module with Java configured: ``python -m mdr.mining.pyserini_cli MODULE ARGS...``."""

from __future__ import annotations

import runpy
import sys

from mdr.mining.java import configure_java

if __name__ == "__main__":
    configure_java()
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
