"""Length-sorted chunks and GradCache: the same loss and gradients as one padded batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mdr.data.collator import BiEncoderBatch, BiEncoderCollator, pack_texts
from mdr.data.schema import Passage, TrainingExample
from mdr.losses import InfoNCELoss
from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer
from mdr.models.module import BiEncoderModule

TEXTS = [
    "สั้น",
    "a somewhat longer English passage about the Panthers' defence and how many points it gave up",
    "पैंथर्स डिफ़ेंस ने कितने अंक दिए?",
    "x",
    "medium length text here",
    "another one, of a middling length, with a comma",
]


def _examples(n: int = 6) -> tuple[dict[str, Passage], list[TrainingExample]]:
    corpus = {f"d{i}": Passage(f"d{i}", text * (1 + i % 3)) for i, text in enumerate(TEXTS * 3)}
    examples = [
        TrainingExample(f"q{i}", TEXTS[i % len(TEXTS)], f"d{i}", (f"d{(i + 5) % 18}", f"d{(i + 11) % 18}"), (f"d{i}",))
        for i in range(n)
    ]
    return corpus, examples


def test_chunks_pad_less_and_unpack_to_the_original_order(tiny_model: Path) -> None:
    tokenizer = load_tokenizer(tiny_model)
    texts = [t * (1 + i % 4) for i, t in enumerate(TEXTS * 4)]
    packed = pack_texts(tokenizer, texts, max_length=64, chunk_tokens=64)
    assert len(packed.chunks) > 1
    padded_once = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert packed.real_tokens == int(padded_once["attention_mask"].sum())
    assert packed.padded_tokens < padded_once["input_ids"].numel()
    rows = packed.unpack([chunk["input_ids"][:, :1].float() for chunk in packed.chunks])  # (N, 1): the CLS id
    assert rows.shape == (len(texts), 1)
    lengths = packed.unpack([chunk["attention_mask"].sum(1, keepdim=True).float() for chunk in packed.chunks])
    assert lengths[:, 0].tolist() == padded_once["attention_mask"].sum(1).float().tolist()


def _roberta_like(padding_side: str) -> PreTrainedTokenizerFast:
    """An XLM-R-shaped tokenizer: <s> ... </s>, pad id 1, no token type ids."""
    words = sorted({word for text in TEXTS for word in text.replace(",", " ").replace("?", " ").split()})
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{word: i + 4 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
        padding_side=padding_side,
    )


@pytest.mark.parametrize("kind", ["bert", "roberta_left_padded"])
def test_each_chunk_is_what_the_tokenizer_pads_itself(tiny_model: Path, kind: str) -> None:
    """Chunks are rebuilt from token ids alone: every model input must equal the tokenizer's own padded batch."""
    tokenizer: PreTrainedTokenizerBase = load_tokenizer(tiny_model) if kind == "bert" else _roberta_like("left")
    texts = [t * (1 + i % 4) for i, t in enumerate(TEXTS * 2)]
    packed = pack_texts(tokenizer, texts, max_length=24, chunk_size=3)
    start = 0
    for chunk in packed.chunks:
        rows = packed.order[start : start + len(chunk["input_ids"])].tolist()
        start += len(rows)
        expected = tokenizer(
            [texts[i] for i in rows], padding=True, truncation=True, max_length=24, return_tensors="pt"
        )
        assert sorted(chunk) == sorted(expected.keys())
        for key in chunk:
            assert torch.equal(chunk[key], expected[key]), (kind, key)


class _CountingCorpus(dict):
    def __init__(self, corpus: dict[str, Passage]) -> None:
        super().__init__(corpus)
        self.reads: list[str] = []

    def __getitem__(self, docid: str) -> Passage:
        self.reads.append(docid)
        return super().__getitem__(docid)


def _same_batch(a: BiEncoderBatch, b: BiEncoderBatch) -> bool:
    tensors = [(a.passage_ids, b.passage_ids), (a.positive_ids, b.positive_ids)]
    for one, other in ((a.queries, b.queries), (a.passages, b.passages)):
        tensors.append((one.order, other.order))
        if len(one.chunks) != len(other.chunks):
            return False
        tensors += [(x[key], y[key]) for x, y in zip(one.chunks, other.chunks) for key in x]
    return all(torch.equal(x, y) for x, y in tensors)


def test_token_cache_tokenises_a_passage_once_and_changes_no_batch(tiny_model: Path) -> None:
    corpus, examples = _examples(12)
    tokenizer = load_tokenizer(tiny_model)
    plain = BiEncoderCollator(tokenizer, corpus, 32, 64, chunk_tokens=64)
    large, small = _CountingCorpus(corpus), _CountingCorpus(corpus)
    cached = BiEncoderCollator(tokenizer, large, 32, 64, chunk_tokens=64, token_cache=1000)
    bounded = BiEncoderCollator(tokenizer, small, 32, 64, chunk_tokens=64, token_cache=4)
    for batch in (examples[:6], examples[6:], examples[:6], examples[3:9]):
        expected = plain(batch)
        assert _same_batch(cached(batch), expected) and _same_batch(bounded(batch), expected)
        assert len(bounded.token_cache) <= 4
    assert sorted(large.reads) == sorted(set(large.reads))  # each passage read and tokenised once
    drawn = {d for e in examples for d in (e.positive, *e.negatives)}
    assert set(large.reads) == drawn and len(cached.token_cache) == len(drawn)
    assert len(small.reads) > len(drawn)  # evicted passages are read again, with the same result


def _encoder(tiny_model: Path) -> BiEncoder:
    torch.manual_seed(0)
    return BiEncoder.from_pretrained(tiny_model, EncoderSettings(pooling="mean", normalize=True))


def _loss_and_grads(module: BiEncoderModule, batch, grad_cache: bool) -> tuple[float, list[torch.Tensor]]:  # noqa: ANN001
    module.encoder.zero_grad(set_to_none=True)
    if grad_cache:
        output = module._grad_cache_backward(batch)
    else:
        output = module._loss(batch, *module._encode_all(batch))
        module.manual_backward(output.loss)
    grads = [p.grad.detach().clone() for p in module.encoder.parameters() if p.grad is not None]
    return output.loss.item(), grads


@pytest.fixture
def module_factory(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    def make(grad_cache: bool, fast_dropout: bool = False) -> BiEncoderModule:
        encoder = _encoder(tiny_model)
        if fast_dropout:
            assert encoder.fast_dropout_enable() > 0
        module = BiEncoderModule(
            encoder, InfoNCELoss(0.05, mask_false_negatives=True), 1e-3, seed=3, grad_cache=grad_cache
        )
        module.train()
        monkeypatch.setattr(BiEncoderModule, "manual_backward", lambda self, loss: loss.backward())
        monkeypatch.setattr(BiEncoderModule, "trainer", property(lambda self: type("T", (), {"strategy": object()})()))
        return module

    return make


def test_chunking_leaves_loss_and_gradients_unchanged(tiny_model: Path, module_factory) -> None:  # noqa: ANN001
    corpus, examples = _examples()
    tokenizer = load_tokenizer(tiny_model)
    one = BiEncoderCollator(tokenizer, corpus, 32, 64, chunk_tokens=10**9)(examples)
    many = BiEncoderCollator(tokenizer, corpus, 32, 64, chunk_size=3)(examples)
    assert len(one.passages.chunks) == 1 and len(many.passages.chunks) == 6
    module = module_factory(False)
    module.eval()  # dropout off: one padded chunk and many small ones must agree
    loss_one, grads_one = _loss_and_grads(module, one, grad_cache=False)
    loss_many, grads_many = _loss_and_grads(module, many, grad_cache=False)
    assert loss_one == pytest.approx(loss_many, abs=1e-5)
    for a, b in zip(grads_one, grads_many):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "two_towers"])
def test_word_embeddings_are_looked_up_once_per_table_and_step(tiny_model: Path, shared: bool) -> None:
    """One lookup per table: one dense (vocab x dim) embedding gradient per step, not one per chunk or side."""
    corpus, examples = _examples()
    batch = BiEncoderCollator(load_tokenizer(tiny_model), corpus, 32, 64, chunk_size=3)(examples)
    assert len(batch.queries.chunks) + len(batch.passages.chunks) > 2
    torch.manual_seed(0)
    encoder = BiEncoder.from_pretrained(tiny_model, EncoderSettings(pooling="mean", normalize=True, shared=shared))
    tables = {side: encoder.backbone_for(side).get_input_embeddings() for side in (False, True)}
    calls: list[int] = []
    for table in {id(t): t for t in tables.values()}.values():
        table.register_forward_hook(lambda module, args, output: calls.append(id(module)))
    module = BiEncoderModule(encoder, InfoNCELoss(0.05), 1e-3)
    module.eval()
    queries, passages = module._encode_all(batch)  # (Q, dim), (Q * (1 + k), dim)
    assert sorted(calls) == sorted({id(t) for t in tables.values()})  # one call per table
    assert len(calls) == (1 if shared else 2)
    in_chunk_order = (
        torch.cat([encoder.encode_queries(chunk) for chunk in batch.queries.chunks]),
        torch.cat([encoder.encode_passages(chunk) for chunk in batch.passages.chunks]),
    )
    torch.testing.assert_close(queries[batch.queries.order], in_chunk_order[0])
    torch.testing.assert_close(passages[batch.passages.order], in_chunk_order[1])


@pytest.mark.parametrize("fast_dropout", [False, True], ids=["torch_dropout", "fast_dropout"])
def test_grad_cache_is_exact_with_dropout_on(tiny_model: Path, module_factory, fast_dropout: bool) -> None:  # noqa: ANN001
    corpus, examples = _examples()
    batch = BiEncoderCollator(load_tokenizer(tiny_model), corpus, 32, 64, chunk_size=4)(examples)
    plain = module_factory(False, fast_dropout)
    cached = module_factory(True, fast_dropout)
    assert plain.training and cached.training  # dropout on in both
    loss_plain, grads_plain = _loss_and_grads(plain, batch, grad_cache=False)
    loss_cached, grads_cached = _loss_and_grads(cached, batch, grad_cache=True)
    assert loss_plain == pytest.approx(loss_cached, abs=1e-5)
    assert len(grads_plain) == len(grads_cached) > 0
    for a, b in zip(grads_plain, grads_cached):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and the replay matters: different dropout masks give different gradients
    cached.seed = 4
    _, grads_other = _loss_and_grads(cached, batch, grad_cache=True)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_plain, grads_other))
