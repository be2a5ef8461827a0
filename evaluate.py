"""Evaluate an encoder on a language's test split: ``python evaluate.py [overrides]`` (see conf/evaluate.yaml).

Zero-shot:   python evaluate.py model=me5_small language=th
A checkpoint: python evaluate.py language=th checkpoint=outputs/train/runs/<time>/encoder
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mdr.pipeline import entry_point, evaluate
from mdr.utils import quiet
from mdr.utils.instantiate import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns MRR@100."""
    quiet.install()  # library messages a user cannot act on (mdr/utils/quiet.py)
    return entry_point(cfg, evaluate)


if __name__ == "__main__":
    main()
