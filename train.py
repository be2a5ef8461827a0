"""Train a multilingual bi-encoder and evaluate it: ``python train.py [overrides]`` (see conf/train.yaml).

Single run:  python train.py language=th model=tiny negatives.hard_proportion=0.5
Sweep:       python train.py experiment=hardneg_sweep
Multi-GPU:   python train.py trainer=ddp trainer.devices=4
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mdr.pipeline import entry_point, train
from mdr.utils import quiet
from mdr.utils.instantiate import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns MRR@100 for Hydra sweepers."""
    quiet.install()  # library messages a user cannot act on (mdr/utils/quiet.py)
    return entry_point(cfg, train)


if __name__ == "__main__":
    main()
