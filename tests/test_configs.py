"""Every config group option composes; experiments set what they promise."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import ROOT

GROUPS = ["language", "data", "model", "negatives", "stage", "trainer", "launcher"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_resolves(make_cfg, group: str) -> None:  # noqa: ANN001
    for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")):
        overrides = [f"{group}={option}"]
        if group == "negatives" and option == "dense":
            overrides.append("negatives.pool.encoder=/some/encoder")
        cfg = make_cfg(*overrides)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        if group != "launcher":  # launcher options are @package _global_ and only set hydra.launcher
            assert resolved[group], (group, option)


def test_languages_cover_the_papers_low_resource_set(make_cfg) -> None:  # noqa: ANN001
    for code, mrtydi in [("sw", "swahili"), ("te", "telugu"), ("bn", "bengali"), ("th", "thai")]:
        cfg = make_cfg(f"language={code}", "data=mrtydi")
        assert cfg.language.low_resource and cfg.data.reader.config == mrtydi
    assert make_cfg("language=hi", "data=miracl").data.reader.config == "hi"


def test_sweep_experiment_defines_the_grid(make_cfg) -> None:  # noqa: ANN001
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=hardneg_sweep"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.task_name == "hardneg_sweep"
    assert params["negatives.hard_proportion"] == "0,0.5,1" and len(params["seed"].split(",")) >= 2
    assert len(params["language"].split(",")) >= 3


@pytest.mark.parametrize("trainer", sorted(p.stem for p in (ROOT / "conf" / "trainer").glob("*.yaml")))
def test_lightning_progress_bar_is_off_by_default_and_outside_run_identity(trainer: str) -> None:
    """Single runs, sweeps and the demo show mdr's progress lines only, not Lightning's bar (0-based epochs)."""
    from hydra import compose, initialize_config_dir

    from mdr.utils.config_identity import canonical_config, config_hash

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        base = [f"trainer={trainer}", "paths.output_dir=run"]
        cfg = compose("train", overrides=base)
        bar = compose("train", overrides=[*base, "trainer.enable_progress_bar=true"])
    assert cfg.trainer.enable_progress_bar is False
    assert config_hash(canonical_config(cfg)) == config_hash(canonical_config(bar))
