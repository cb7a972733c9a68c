"""Pure functions of training: contrastive loss, learning-rate schedule, stage-1 sequence packing."""

import math

import pytest
import torch

from lusifer.train.losses import contrastive_loss, similarity_distillation_loss
from lusifer.train.schedule import lr_at
from lusifer.train.stage1 import pack_prefix_and_target


def test_contrastive_loss_known_values():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # norms do not matter: cosine similarities
    p = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    # in-batch only, temperature 1: logits are the identity matrix
    assert contrastive_loss(q, p, temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # one hard negative opposite to query 0: row 0 logits [1, 0, -1], row 1 logits [0, 1, 0]
    n = torch.tensor([[-1.0, 0.0]])
    expected = 0.5 * (
        -math.log(math.e / (math.e + 1 + math.exp(-1))) - math.log(math.e / (1 + math.e + 1))
    )
    assert contrastive_loss(q, p, n, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    # temperature divides the logits
    expected_t = 0.5 * (
        -math.log(math.exp(20) / (math.exp(20) + 1 + math.exp(-20))) - math.log(math.exp(20) / (1 + math.exp(20) + 1))
    )
    assert contrastive_loss(q, p, n, temperature=0.05).item() == pytest.approx(expected_t, abs=1e-6)


def test_contrastive_loss_matches_reference_and_shapes():
    torch.manual_seed(0)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 2, 8)
    flat = n.reshape(-1, 8)
    cand = torch.cat([p, flat])
    logits = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(cand, dim=-1).T / 0.05
    reference = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    assert contrastive_loss(q, p, n).item() == pytest.approx(reference.item(), rel=1e-5)
    assert contrastive_loss(q, p, flat).item() == pytest.approx(reference.item(), rel=1e-5)
    # hard negatives are a shared pool: their order does not matter
    assert contrastive_loss(q, p, flat.flip(0)).item() == pytest.approx(reference.item(), rel=1e-5)
    # an empty pool equals no pool
    assert contrastive_loss(q, p, torch.zeros(0, 8)).item() == pytest.approx(contrastive_loss(q, p).item())
    with pytest.raises(ValueError, match="must both be"):
        contrastive_loss(q, p[:3])
    with pytest.raises(ValueError, match="negatives"):
        contrastive_loss(q, p, torch.randn(3, 5))
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(q, p, temperature=0.0)


def test_contrastive_loss_falls_on_a_toy_task():
    """Optimising free embeddings with the loss separates positives from hard negatives."""
    torch.manual_seed(0)
    q = torch.randn(8, 16, requires_grad=True)
    p = torch.randn(8, 16, requires_grad=True)
    n = torch.randn(8, 16, requires_grad=True)
    opt = torch.optim.SGD([q, p, n], lr=0.1)
    first = None
    for _ in range(50):
        loss = contrastive_loss(q, p, n)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert n.grad is not None and n.grad.abs().sum() > 0
    assert loss.item() < 0.1 * first


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_similarity_distillation_loss(kind):
    """Zero when the student's cosine structure equals the teacher's (any width, scale or rotation), positive
    otherwise; gradients reach the student only."""
    torch.manual_seed(0)
    teacher = torch.randn(6, 4)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    same = torch.cat([teacher, torch.zeros(6, 4)], dim=1) @ rotation * torch.tensor([[1.0], [3], [0.5], [2], [1], [7]])
    assert similarity_distillation_loss(same, teacher, kind).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(6, 8, requires_grad=True)
    teacher = teacher.clone().requires_grad_(True)
    loss = similarity_distillation_loss(student, teacher, kind, temperature=0.1)
    assert loss.item() > 1e-3
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_similarity_distillation_loss_known_values_and_errors():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # cosines: (0,1)=0, (0,2)=(1,2)=1/sqrt(2)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # cosines: (0,1)=1, (0,2)=(1,2)=0
    c = 1 / math.sqrt(2)
    assert similarity_distillation_loss(s, t, "mse").item() == pytest.approx((2 * 1 + 4 * c**2) / 6, abs=1e-6)

    def kl(p_logits, q_logits):  # KL(softmax(p) || softmax(q))
        p, q = torch.softmax(torch.tensor(p_logits), 0), torch.softmax(torch.tensor(q_logits), 0)
        return float((p * (p / q).log()).sum())

    rows = [([1.0, 0.0], [0.0, c]), ([1.0, 0.0], [0.0, c]), ([0.0, 0.0], [c, c])]  # (teacher, student) per row
    expected = sum(kl([x / 0.5 for x in t_row], [x / 0.5 for x in s_row]) for t_row, s_row in rows) / 3
    assert similarity_distillation_loss(s, t, "kl", temperature=0.5).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="same N texts"):
        similarity_distillation_loss(s, t[:2])
    with pytest.raises(ValueError, match="at least 2"):
        similarity_distillation_loss(s[:1], t[:1])
    with pytest.raises(ValueError, match="kind='l2'"):
        similarity_distillation_loss(s, t, "l2")
    with pytest.raises(ValueError, match="temperature"):
        similarity_distillation_loss(s, t, temperature=-1.0)


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 1.0, 4, 14, min_lr_ratio=0.1) for s in range(14)]
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))
    assert lr_at(0, 3e-4, 0, 1) == 3e-4
    with pytest.raises(ValueError):
        lr_at(-1, 1.0, 0, 10)


def test_pack_prefix_and_target_removes_holes():
    h = 3
    # row 0: prefix [a, pad, L] (a hole before the learnable token L), target [t1, t2]
    # row 1: prefix [b, c, L], target [u1, pad]
    prefix = torch.arange(2 * 3 * h, dtype=torch.float32).reshape(2, 3, h)
    prefix_mask = torch.tensor([[1, 0, 1], [1, 1, 1]])
    target_ids = torch.tensor([[7, 8], [9, 0]])
    target_mask = torch.tensor([[1, 1], [1, 0]])
    target_embeds = 100 + target_ids.unsqueeze(-1).float().expand(-1, -1, h)
    embeds, mask, labels = pack_prefix_and_target(prefix, prefix_mask, target_embeds, target_ids, target_mask)
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, 7, 8, -100], [-100, -100, -100, 9, -100]]
    assert torch.equal(embeds[0, :2], prefix[0, [0, 2]])
    assert torch.equal(embeds[0, 2:4], target_embeds[0])
    assert torch.equal(embeds[1, :3], prefix[1])
    assert torch.equal(embeds[1, 3], target_embeds[1, 0])
