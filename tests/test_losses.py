"""InfoNCE: equal to a hand computation, and exact under 2-process CPU DDP with gathered passages."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mdr.losses import InfoNCELoss


def test_matches_hand_computation() -> None:
    # 2 queries, 1 hard negative each: passages [p0, n0, p1, n1]
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    passages = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0], [1.2, 1.0]])
    temperature = 0.5
    out = InfoNCELoss(temperature)(queries, passages)
    scores = [[1.0, 0.5, 0.0, 1.2], [0.0, 0.5, 2.0, 1.0]]
    expected = 0.0
    for row, target in zip(scores, (0, 2)):
        logits = [s / temperature for s in row]
        expected += -(logits[target] - math.log(sum(math.exp(x) for x in logits)))
    assert out.loss.item() == pytest.approx(expected / 2, rel=1e-6)
    assert out.accuracy.item() == pytest.approx(0.5)  # query 0 ranks query 1's negative above its positive


def test_every_in_batch_passage_is_a_negative() -> None:
    torch.manual_seed(0)
    queries, passages = torch.randn(4, 8), torch.randn(4 * 3, 8)
    loss = InfoNCELoss()(queries, passages).loss
    scores = queries @ passages.T
    manual = torch.nn.functional.cross_entropy(scores, torch.tensor([0, 3, 6, 9]))
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(
    rank: int, world: int, port: int, queries: torch.Tensor, passages: torch.Tensor, weight: torch.Tensor, results: dict
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    model.weight.data.copy_(weight)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    q_per_rank, p_per_rank = queries.shape[0] // world, passages.shape[0] // world
    local_q = queries[rank * q_per_rank : (rank + 1) * q_per_rank]
    local_p = passages[rank * p_per_rank : (rank + 1) * p_per_rank]
    loss = InfoNCELoss(0.1)(ddp(local_q), ddp(local_p)).loss
    loss.backward()
    results[rank] = (loss.detach(), model.weight.grad.detach().clone())
    dist.destroy_process_group()


def test_ddp_gather_gives_the_single_process_gradient() -> None:
    torch.manual_seed(0)
    world, dim = 2, 6
    queries, passages, weight = torch.randn(4, dim), torch.randn(4 * 3, dim), torch.randn(5, dim)
    # single process: all 4 queries against all 12 passages
    model = torch.nn.Linear(dim, 5, bias=False)
    model.weight.data.copy_(weight)
    reference = InfoNCELoss(0.1)(model(queries), model(passages)).loss
    reference.backward()
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(world, _free_port(), queries, passages, weight, results), nprocs=world, join=True)
    losses = [results[r][0] for r in range(world)]
    # each rank's loss is over its own queries against all passages; their mean is the global loss
    assert torch.stack(losses).mean().item() == pytest.approx(reference.item(), rel=1e-5)
    for rank in range(world):
        torch.testing.assert_close(results[rank][1], model.weight.grad, rtol=1e-5, atol=1e-6)
    # without the gather, each rank would only see its own passages: a different loss
    local = InfoNCELoss(0.1)(model(queries[:2]), model(passages[:6])).loss
    assert abs(local.item() - losses[0].item()) > 1e-3


def test_false_negatives_leave_the_softmax_hand_computation() -> None:
    # 2 queries, 1 negative each: passages [p0, n0, p1, n1]; q0's judged positives are docs 10 and 12,
    # and doc 12 is also q1's negative (column 3); q1's positive (doc 11) is q0's negative (column 1)
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    passages = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0], [1.2, 1.0]])
    passage_ids = torch.tensor([10, 11, 11, 12])  # p1 and n0 are the same document (11)
    positive_ids = torch.tensor([[10, 12], [11, -1]])
    temperature = 0.5
    out = InfoNCELoss(temperature, mask_false_negatives=True)(queries, passages, passage_ids, positive_ids)
    scores = [[1.0, 0.5, 0.0, 1.2], [0.0, 0.5, 2.0, 1.0]]
    kept = [[0, 1, 2], [0, 2, 3]]  # q0 loses column 3 (doc 12); q1 loses column 1 (doc 11, not its target)
    expected = 0.0
    for row, target, columns in zip(scores, (0, 2), kept):
        logits = [row[c] / temperature for c in columns]
        expected += -(row[target] / temperature - math.log(sum(math.exp(x) for x in logits)))
    assert out.loss.item() == pytest.approx(expected / 2, rel=1e-6)
    assert out.masked.item() == 2
    assert out.accuracy.item() == pytest.approx(1.0)  # without column 3, q0's positive is its best
    unmasked = InfoNCELoss(temperature)(queries, passages, passage_ids, positive_ids)
    assert unmasked.masked.item() == 0 and unmasked.loss.item() > out.loss.item()


def test_mask_needs_ids() -> None:
    with pytest.raises(ValueError, match="passage_ids"):
        InfoNCELoss(mask_false_negatives=True)(torch.randn(2, 4), torch.randn(4, 4))


def _masked_worker(
    rank: int,
    world: int,
    port: int,
    queries: torch.Tensor,
    passages: torch.Tensor,
    ids: torch.Tensor,
    positives: torch.Tensor,
    results: dict,
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    q_per_rank, p_per_rank = queries.shape[0] // world, passages.shape[0] // world
    local_q = queries[rank * q_per_rank : (rank + 1) * q_per_rank].clone().requires_grad_(True)
    local_p = passages[rank * p_per_rank : (rank + 1) * p_per_rank].clone().requires_grad_(True)
    out = InfoNCELoss(0.1, mask_false_negatives=True)(
        local_q,
        local_p,
        ids[rank * p_per_rank : (rank + 1) * p_per_rank],
        positives[rank * q_per_rank : (rank + 1) * q_per_rank],
    )
    out.loss.backward()
    results[rank] = (out.loss.detach(), out.masked.detach(), local_q.grad.clone())
    dist.destroy_process_group()


def test_ddp_masks_duplicates_held_by_another_rank() -> None:
    torch.manual_seed(1)
    world = 2
    queries, passages = torch.randn(4, 6), torch.randn(4 * 2, 6)
    # query 0 (rank 0) and query 3 (rank 1) share their positive document 7; query 1's positive 9 is
    # query 2's negative (rank 1): both are false negatives that only the gathered ids reveal
    ids = torch.tensor([7, 1, 9, 2, 3, 9, 7, 4])
    positives = torch.tensor([[7], [9], [3], [7]])
    reference = InfoNCELoss(0.1, mask_false_negatives=True)(queries, passages, ids, positives)
    assert reference.masked.item() == 3  # q0 <- column 6, q1 <- column 5, q3 <- column 0
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(
        _masked_worker, args=(world, _free_port(), queries, passages, ids, positives, results), nprocs=world, join=True
    )
    assert torch.stack([results[r][0] for r in range(world)]).mean().item() == pytest.approx(
        reference.loss.item(), rel=1e-5
    )
    assert sum(int(results[r][1]) for r in range(world)) == 3
