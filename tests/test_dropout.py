"""train.fast_dropout: the same dropout (rate, scaling, seeding) from a faster mask, and SDPA left alone elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from mdr.models import dropout
from mdr.models.dropout import (
    ATTENTION,
    FastDropout,
    attention_with_dropout,
    drop_mask,
    fast_dropout,
    install_fast_dropout,
)


def test_fast_dropout_drops_at_rate_p_and_rescales_the_rest() -> None:
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros, so a zero means dropped
    for p in (0.1, 0.5):
        y = fast_dropout(x, p)
        dropped = y == 0
        # 1e6 draws: the standard error of the rate is < 5e-4
        assert float(dropped.float().mean()) == pytest.approx(round(p * 65536) / 65536, abs=2e-3)
        torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p))
        # every 16-bit lane of the random words is used alike (a biased lane would show in its columns)
        lanes = dropped.reshape(-1, 4).float().mean(dim=0)
        assert torch.all((lanes - p).abs() < 5e-3), lanes


def test_the_four_masks_from_one_random_word_are_independent() -> None:
    """At p = 0.5 the 16 joint drop patterns of a word's four lanes are equally likely (equal lanes would not be)."""
    torch.manual_seed(0)
    dropped = fast_dropout(torch.ones(250_000, 4), 0.5) == 0  # row i: the four lanes of word i
    patterns = (dropped.long() * torch.tensor([1, 2, 4, 8])).sum(dim=1)  # (250000,) in 0..15
    shares = torch.bincount(patterns, minlength=16).float() / len(patterns)
    assert torch.all((shares - 1 / 16).abs() < 0.003), shares  # each share's standard error is 0.0005


def test_fast_dropout_masks_follow_torchs_seed_and_vanish_when_off() -> None:
    x = torch.ones(64, 96)
    torch.manual_seed(7)
    first = fast_dropout(x, 0.1)
    torch.manual_seed(7)
    assert torch.equal(first, fast_dropout(x, 0.1))  # GradCache's replay and a resumed run rely on this
    torch.manual_seed(8)
    assert not torch.equal(first, fast_dropout(x, 0.1))
    assert fast_dropout(x, 0.1, training=False) is x
    assert fast_dropout(x, 0.0) is x
    module = FastDropout(0.3).eval()
    assert torch.equal(module(x), x)


def test_fast_dropout_gradient_is_the_mask_over_keep_probability() -> None:
    x = torch.ones(32, 64, requires_grad=True)
    torch.manual_seed(1)
    y = fast_dropout(x, 0.2)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.8)


def test_attention_drops_probabilities_and_rescales_the_output() -> None:
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 2, 4, 7, 8).unbind(0)  # (B, H, L, d) each
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask[..., 0] = True
    torch.manual_seed(11)
    ours = attention_with_dropout(query, key, value, mask, 8**-0.5, 0.25)  # (B, L, H, d)
    torch.manual_seed(11)
    keep = drop_mask(torch.Size((2, 4, 7, 7)), 0.25)  # the same draw
    probs = torch.softmax((query @ key.transpose(-1, -2) * 8**-0.5).masked_fill(~mask, float("-inf")), dim=-1)
    expected = ((probs * keep) @ value / 0.75).transpose(1, 2)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert not keep.all()


def test_cpu_training_runs_the_dropout_attention_and_evaluation_runs_sdpa(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = AutoModel.from_pretrained(str(tiny_model), add_pooling_layer=False)
    install_fast_dropout(model)
    calls: list[float] = []
    original = dropout.attention_with_dropout

    def spy(*args: Any) -> torch.Tensor:
        calls.append(args[-1])
        return original(*args)

    monkeypatch.setattr(dropout, "attention_with_dropout", spy)
    ids = torch.randint(5, 1000, (2, 9))  # (batch, seq)
    model.train()
    model(input_ids=ids, attention_mask=torch.ones_like(ids))
    layers = model.config.num_hidden_layers
    assert calls == [model.config.attention_probs_dropout_prob] * layers
    model.eval()
    model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert len(calls) == layers


@pytest.mark.parametrize("p", [1e-6, 0.999999, 1.0])
def test_rates_sixteen_bits_cannot_give_fall_back_to_torch(p: float) -> None:
    x = torch.ones(1000, 100)
    torch.manual_seed(2)
    ours = fast_dropout(x, p)
    torch.manual_seed(2)
    torch.testing.assert_close(ours, torch.nn.functional.dropout(x, p, True))


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_attention_without_dropout_is_sdpa(mask_kind: str) -> None:
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 2, 4, 7, 8).unbind(0)  # (B, H, L, d) each
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask[..., 0] = True  # every row attends somewhere
    given = {"bool": mask, "additive": torch.zeros(2, 1, 7, 7).masked_fill(~mask, -1e9), "none": None}[mask_kind]
    ours = attention_with_dropout(query, key, value, given, 8**-0.5, 0.0)  # (B, L, H, d)
    reference = F.scaled_dot_product_attention(query, key, value, attn_mask=given).transpose(1, 2)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_installed_backbone_evaluates_as_before_and_replays_its_training_masks(tiny_model: Path) -> None:
    model = AutoModel.from_pretrained(str(tiny_model), add_pooling_layer=False).eval()
    ids = torch.randint(5, 1000, (4, 20))  # (batch, seq)
    mask = torch.ones_like(ids)
    mask[:, 15:] = 0
    mask[0, 8:] = 0
    before = model(input_ids=ids, attention_mask=mask).last_hidden_state
    installed = install_fast_dropout(model)
    assert installed > 0 and install_fast_dropout(model) == installed  # a second stage installs nothing new
    assert model.config._attn_implementation == ATTENTION
    assert all(type(m) is not torch.nn.Dropout for m in model.modules())
    assert not any(m.training for m in model.modules())  # replacements keep the eval mode
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).last_hidden_state, before)  # SDPA path
    model.train()
    outputs = []
    for _ in range(2):
        torch.manual_seed(5)
        outputs.append(model(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], before, atol=1e-3)  # dropout is on in training
    # attention dropout alone (its rate is the self-attention's dropout module's p) also changes the output
    for name, module in model.named_modules():
        if isinstance(module, FastDropout):
            module.p = 0.1 if name.endswith("attention.self.dropout") else 0.0
    torch.manual_seed(5)
    attention_only = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(attention_only, before, atol=1e-4)


def test_install_refuses_a_backbone_without_sdpa(tiny_model: Path) -> None:
    model = AutoModel.from_pretrained(str(tiny_model), add_pooling_layer=False, attn_implementation="eager")
    with pytest.raises(ValueError, match="train.fast_dropout"):
        install_fast_dropout(model)
