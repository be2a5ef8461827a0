"""Faster dropout for CPU training (``train.fast_dropout``, docs/training.md): each 64-bit random word gives four
16-bit draws, dropped below ``round(p * 65536)``; seeded by ``torch.manual_seed``, not torch's own masks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, AutoConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.models.auto.modeling_auto import MODEL_MAPPING

ATTENTION = "mdr_fast_dropout"
"""The attention implementation :func:`install_fast_dropout` gives a backbone (registered with transformers)."""

_LEVELS = 1 << 16


def representable(p: float) -> bool:
    """Whether 16 random bits give drop rate p to within 1/131072 (not for p < 1/131072 or p > 1 - 1/131072)."""
    return 0 < round(p * _LEVELS) < _LEVELS


def drop_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean keep-mask of ``shape`` (CPU), True with probability 1 - round(p * 65536) / 65536."""
    if not representable(p):
        raise ValueError(f"a 16-bit dropout mask cannot drop with probability {p}")
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)  # all 64 bits random
    bits = words.view(torch.int16)[:count].view(shape)  # 16 uniform random bits per element
    return bits >= round(p * _LEVELS) - (1 << 15)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with :func:`drop_mask` on CPU; torch's own dropout elsewhere."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not representable(p):
        return nn.functional.dropout(x, p, training)
    return torch.mul(x, drop_mask(x.shape, p)).mul_(1.0 / (1.0 - p))  # same shape as x


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with :func:`fast_dropout` (still an ``nn.Dropout``: ``p`` and ``train()`` work as usual)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Dropout's argument name
        return fast_dropout(input, self.p, self.training)


def attention_with_dropout(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float,
) -> torch.Tensor:
    """Bidirectional attention with :func:`drop_mask` on the probabilities: (B, Lq, H, d) from (B, H, L, d); a query
    row with no key to attend to gets the mean of the values, as transformers' eager attention gives (SDPA: zeros)."""
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))  # (B, H, Lq, Lk)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # SDPA's mask: True = attend, (B, 1, Lq, Lk)
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:  # additive float mask
            scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)  # (B, H, Lq, Lk)
    scale = 1.0
    if dropout > 0.0:  # a rate 16 bits can give (dropout_attention checks)
        probs = probs * drop_mask(probs.shape, dropout)  # (B, H, Lq, Lk)
        scale = 1.0 / (1.0 - dropout)
    output = torch.matmul(probs, value) * scale  # (B, H, Lq, d)
    return output.transpose(1, 2).contiguous()  # (B, Lq, H, d)


def dropout_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: :func:`attention_with_dropout` in CPU training, else SDPA."""
    encoder_self_attention = not getattr(module, "is_causal", False) and query.shape[2] == key.shape[2]
    plain = dropout == 0.0 or query.device.type != "cpu" or not representable(dropout)
    if plain or not encoder_self_attention or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return attention_with_dropout(query, key, value, attention_mask, scale, dropout), None


AttentionInterface.register(ATTENTION, dropout_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # the same masks as SDPA


def sdpa_supported(name_or_path: str) -> bool:
    """Whether the transformers model at ``name_or_path`` runs SDPA attention (read from its config alone)."""
    model_class = MODEL_MAPPING.get(type(AutoConfig.from_pretrained(name_or_path)), None)
    return bool(getattr(model_class, "_supports_sdpa", False))


def install_fast_dropout(backbone: PreTrainedModel) -> int:
    """Give ``backbone`` fast dropout (idempotent); returns how many modules draw it (no SDPA attention: ValueError)."""
    current = backbone.config._attn_implementation
    if current not in ("sdpa", ATTENTION):
        raise ValueError(
            f"train.fast_dropout=true needs a backbone with SDPA attention; {type(backbone).__name__} runs {current!r}"
        )
    for parent in list(backbone.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                replacement = FastDropout(child.p, child.inplace)
                replacement.train(child.training)  # a new module starts in training mode
                setattr(parent, name, replacement)
    backbone.config._attn_implementation = ATTENTION
    return sum(isinstance(module, FastDropout) for module in backbone.modules())
