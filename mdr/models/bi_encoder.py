"""A bi-encoder over a Hugging Face backbone: one shared encoder (or two), CLS or mean pooling, optional L2 norm."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mdr.models.dropout import ATTENTION as DROPOUT_ATTENTION
from mdr.models.dropout import install_fast_dropout
from mdr.utils.io import reporting_no_space, share_like_new_files

SETTINGS_FILE = "mdr_encoder.json"


class ModelLoadError(OSError):
    """A model path or hub id that cannot be loaded."""


@dataclass(frozen=True)
class EncoderSettings:
    """How texts become vectors; saved next to the weights so a checkpoint is self-describing."""

    pooling: Literal["cls", "mean"] = "cls"
    normalize: bool = False
    shared: bool = True
    query_max_length: int = 64
    passage_max_length: int = 256
    query_prefix: str = ""
    passage_prefix: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"model.pooling must be 'cls' or 'mean', got {self.pooling!r}")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, dim) hidden states -> (batch, dim) by the first token or the masked mean."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def _load_backbone(name_or_path: str | Path) -> PreTrainedModel:
    try:
        try:  # BERT / XLM-R: no pooler head, which a bi-encoder never uses (and DDP would flag as unused)
            return AutoModel.from_pretrained(str(name_or_path), add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_pretrained(str(name_or_path))
    except (OSError, ValueError, SafetensorError) as error:
        raise _load_error(name_or_path, error) from error


def _load_error(name_or_path: str | Path, error: Exception) -> ModelLoadError:
    """What is wrong, in the user's terms: a folder here that is not a loadable model names the file at fault."""
    folder = Path(str(name_or_path))
    if not folder.is_dir():
        return ModelLoadError(
            f"model.name_or_path={str(name_or_path)!r} cannot be loaded: not a model folder here "
            f"and not reachable on the Hugging Face hub ({error.__class__.__name__})"
        )
    first_line = (str(error).strip().splitlines() or [""])[0]
    if not (folder / "config.json").is_file():
        detail = f"{folder / 'config.json'} is missing"
    elif isinstance(error, SafetensorError):
        weights = ", ".join(str(path) for path in sorted(folder.glob("*.safetensors")))
        detail = f"its weights ({weights}) cannot be read, truncated or not safetensors: {first_line}"
    else:
        detail = first_line
    return ModelLoadError(f"model.name_or_path={str(folder)!r} is a folder but not a loadable model: {detail}")


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model (or on the hub)."""
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"model.name_or_path={str(name_or_path)!r}: no tokenizer can be loaded ({error})"
        ) from error


class BiEncoder(nn.Module):
    """Encodes queries and passages into one vector space (``passage_backbone`` None: the query tower is shared)."""

    def __init__(
        self, query_backbone: PreTrainedModel, passage_backbone: PreTrainedModel | None, settings: EncoderSettings
    ) -> None:
        super().__init__()
        self.query_backbone, self.passage_backbone, self.settings = query_backbone, passage_backbone, settings

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, settings: EncoderSettings) -> BiEncoder:
        """Load a hub model, a local one, or a bi-encoder saved by :meth:`save_pretrained` (per ``settings.shared``)."""
        root = Path(str(name_or_path))
        if (root / "query_encoder").is_dir():
            return cls(_load_backbone(root / "query_encoder"), _load_backbone(root / "passage_encoder"), settings)
        query_backbone = _load_backbone(name_or_path)
        passage_backbone = None if settings.shared else _load_backbone(name_or_path)
        return cls(query_backbone, passage_backbone, settings)

    def _encode(self, backbone: PreTrainedModel, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "inputs_embeds" in inputs:  # word embeddings looked up beforehand (:meth:`embed_words`)
            inputs = {key: value for key, value in inputs.items() if key != "input_ids"}
        hidden = backbone(**inputs).last_hidden_state  # (batch, seq, dim)
        vectors = pool(hidden, inputs["attention_mask"], self.settings.pooling)  # (batch, dim)
        return F.normalize(vectors, dim=-1) if self.settings.normalize else vectors

    def _towers(self) -> list[PreTrainedModel]:
        return [backbone for backbone in (self.query_backbone, self.passage_backbone) if backbone is not None]

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer's activations in backward instead of storing them (less memory, ~30% slower)."""
        for backbone in self._towers():
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def fast_dropout_supported(self) -> bool:
        """Whether every backbone runs SDPA attention, the one :mod:`mdr.models.dropout` mirrors."""
        return all(backbone.config._attn_implementation in ("sdpa", DROPOUT_ATTENTION) for backbone in self._towers())

    def fast_dropout_enable(self) -> int:
        """CPU training draws dropout masks with :mod:`mdr.models.dropout`; returns the modules that now do."""
        return sum(install_fast_dropout(backbone) for backbone in self._towers())

    def backbone_for(self, passages: bool) -> PreTrainedModel:
        """The tower that encodes queries (``passages=False``) or passages."""
        return (self.passage_backbone or self.query_backbone) if passages else self.query_backbone

    def embed_words(
        self, query_chunks: list[Mapping[str, torch.Tensor]], passage_chunks: list[Mapping[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Word embeddings of every query and passage chunk, (n_c, len_c, dim) each, one lookup (gradient) per table."""
        if self.passage_backbone is None:
            pieces = _lookup(self.query_backbone, [*query_chunks, *passage_chunks])
            return pieces[: len(query_chunks)], pieces[len(query_chunks) :]
        return _lookup(self.query_backbone, query_chunks), _lookup(self.passage_backbone, passage_chunks)

    def encode_queries(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(batch, dim) query vectors."""
        return self._encode(self.backbone_for(False), inputs)

    def encode_passages(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(batch, dim) passage vectors."""
        return self._encode(self.backbone_for(True), inputs)

    def save_pretrained(self, directory: str | Path, tokenizer: PreTrainedTokenizerBase) -> Path:
        """Save weights, tokenizer and settings (a full disk: NoSpaceError); two towers go to
        ``directory/{query,passage}_encoder``, a shared one loads in transformers and sentence-transformers."""
        out = Path(directory)
        with reporting_no_space(out):
            out.mkdir(parents=True, exist_ok=True)
            if self.passage_backbone is None:
                self.query_backbone.save_pretrained(out)
                tokenizer.save_pretrained(out)
                _write_sentence_transformers_files(out, self.settings, self.query_backbone.config.hidden_size)
            else:
                towers = (("query_encoder", self.query_backbone), ("passage_encoder", self.passage_backbone))
                for name, backbone in towers:
                    backbone.save_pretrained(out / name)
                    tokenizer.save_pretrained(out / name)
                tokenizer.save_pretrained(out)
            (out / SETTINGS_FILE).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")
        share_like_new_files(out)  # safetensors writes 0600: keep saved encoders readable like other results
        return out


def _lookup(backbone: PreTrainedModel, chunks: list[Mapping[str, torch.Tensor]]) -> list[torch.Tensor]:
    """``backbone``'s word embeddings of all ``chunks`` in one call, split back into (n_c, len_c, dim) per chunk."""
    ids = [chunk["input_ids"] for chunk in chunks]
    vectors = backbone.get_input_embeddings()(torch.cat([chunk_ids.reshape(-1) for chunk_ids in ids]))  # (tokens, dim)
    pieces = torch.split(vectors, [chunk_ids.numel() for chunk_ids in ids])
    return [piece.view(*chunk_ids.shape, -1) for piece, chunk_ids in zip(pieces, ids)]  # (n_c, len_c, dim)


def _write_sentence_transformers_files(out: Path, settings: EncoderSettings, dim: int) -> None:
    """sentence-transformers files: ``encode_query`` / ``encode_document`` encode as mdr does, ``encode`` unprefixed."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if settings.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "1_Pooling").mkdir(exist_ok=True)
    lengths = {"query_length": settings.query_max_length, "document_length": settings.passage_max_length}
    prompts = {"query": settings.query_prefix, "document": settings.passage_prefix}
    cls, mean = settings.pooling == "cls", settings.pooling == "mean"
    bert = {"max_seq_length": settings.passage_max_length, **lengths, "do_lower_case": False}
    config = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "dot"}
    pooling = {"word_embedding_dimension": dim, "pooling_mode_cls_token": cls, "pooling_mode_mean_tokens": mean}
    names = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json")
    for name, value in zip(names, (modules, bert, config, pooling)):
        (out / name).write_text(json.dumps(value, indent=2) + "\n")
