"""MIL models (mil.models): every registered model learns a bag label carried by a few
instances, attention models point at those instances, and the output contract holds
(shapes, finite per-instance scores, label masking, CLAM/DSMIL instance losses, bags of
1 and 20,000 instances without an N x N tensor, clear errors).

Synthetic bags: 40-200 instances of 32-dim standard noise; in a positive bag 5-10% of the
instances are shifted by ``SHIFT`` along one fixed unit direction. Each model is trained
once per module (lazily, shared by the tests that need it): Adam, a few epochs, one bag
per step, CPU, seeded.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mil.losses import binary_loss, nll_survival_loss
from mil.models import MODELS, Head, create_model
from mil.models.transmil import iterative_pinv, nystrom_attention, segment_means
from pathology.errors import InputError

DIM = 32
HIDDEN = 32
SHIFT = 6.0
EPOCHS = 4
LR = 1e-3
ATTENTION_MODELS = ("abmil", "gated-abmil", "clam-sb", "clam-mb")
IMPORTANCE_ONLY = {"mean", "max"}            # per-instance head scores, not softmax weights
INSTANCE_LOSS_MODELS = ("clam-sb", "clam-mb", "dsmil")
MULTI_HEADS = [Head("tumor", 1), Head("er", 1), Head("os", 4)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_bags(n: int, seed: int) -> tuple[list[torch.Tensor], np.ndarray, list[np.ndarray]]:
    """``n`` bags (alternately negative / positive), their labels, and each bag's signal-instance mask."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(1234).standard_normal(DIM)
    direction /= np.linalg.norm(direction)
    bags, labels, signal = [], np.arange(n) % 2, []
    for y in labels:
        size = int(rng.integers(40, 201))
        x = rng.standard_normal((size, DIM)).astype(np.float32)
        mask = np.zeros(size, dtype=bool)
        if y:
            mask[rng.choice(size, max(1, round(size * rng.uniform(0.05, 0.10))), replace=False)] = True
            x[mask] += (SHIFT * direction).astype(np.float32)
        bags.append(torch.from_numpy(x))
        signal.append(mask)
    return bags, labels, signal


@pytest.fixture(scope="module")
def bags():
    return {"train": make_bags(160, seed=0), "test": make_bags(80, seed=1)}


@pytest.fixture(scope="module")
def trained(bags):
    """name -> (held-out bag logits, held-out attention maps), training each model once on first use."""
    cache: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = train_and_predict(name, bags["train"], bags["test"])
        return cache[name]

    return get


def train_and_predict(name, train, test):
    torch.manual_seed(0)
    model = create_model(name, DIM, [Head("y", 1)], hidden=HIDDEN)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    rng = np.random.default_rng(0)
    x_train, y_train, _ = train
    for _ in range(EPOCHS):
        model.train()
        for i in rng.permutation(len(x_train)):
            label = torch.tensor(float(y_train[i]))
            out = model(x_train[i], {"y": label})
            loss = binary_loss(out.logits["y"], label.reshape(1)) + out.instance_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        outs = [model(x) for x in test[0]]
    return np.array([float(o.logits["y"][0]) for o in outs]), [o.attention["y"].numpy() for o in outs]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_learns_the_bag_label(name, bags, trained):
    scores, _ = trained(name)
    assert np.isfinite(scores).all()
    assert roc_auc_score(bags["test"][1], scores) >= 0.95


@pytest.mark.parametrize("name", ATTENTION_MODELS)
def test_attention_ranks_signal_instances_highest(name, bags, trained):
    _, attention = trained(name)
    _, labels, signal = bags["test"]
    precision = [mask[np.argsort(-a, kind="stable")[:mask.sum()]].mean()
                 for a, y, mask in zip(attention, labels, signal) if y]
    assert len(precision) == 40
    assert np.mean(precision) >= 0.8, f"{name}: top-k precision {np.mean(precision):.2f}"


# ------------------------------------------------------------------ output contract


def bag(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_finite_score_per_instance_and_task(name):
    torch.manual_seed(0)
    model = create_model(name, DIM, MULTI_HEADS, hidden=HIDDEN).eval()
    with torch.no_grad():
        out = model(bag(37))
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {"tumor": (1,), "er": (1,), "os": (4,)}
    assert set(out.attention) == {"tumor", "er", "os"}
    for task, a in out.attention.items():
        assert a.shape == (37,) and torch.isfinite(a).all(), task
        if name not in IMPORTANCE_ONLY:
            assert (a >= 0).all() and abs(float(a.sum()) - 1.0) < 1e-5, task
    assert float(out.instance_loss) == 0.0


def head_parameters(model: nn.Module, index: int) -> dict[str, torch.Tensor]:
    """Parameters that belong to head ``index`` alone: entry ``index`` of every per-head ModuleList."""
    out = {}
    for child_name, child in model.named_children():
        if isinstance(child, nn.ModuleList) and len(child) == len(model.heads):
            out.update({f"{child_name}.{index}.{n}": p for n, p in child[index].named_parameters()})
    return out


def gradients(model, x, labels: dict[str, float | tuple[float, float]]) -> dict[str, torch.Tensor]:
    """Gradients of the summed multi-task loss (tasks absent from ``labels`` are left out)."""
    model.zero_grad()
    tensors = {k: torch.tensor(v, dtype=torch.float32) for k, v in labels.items()}
    out = model(x, tensors)
    loss = out.instance_loss
    for task in ("tumor", "er"):
        if task in tensors:
            loss = loss + binary_loss(out.logits[task], tensors[task].reshape(1))
    if "os" in tensors:
        loss = loss + nll_survival_loss(out.logits["os"].reshape(1, -1), torch.tensor([1]), tensors["os"][1:])
    loss.backward()
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unknown_label_masks_only_its_task(name):
    torch.manual_seed(0)
    model = create_model(name, DIM, MULTI_HEADS, hidden=HIDDEN, dropout=0.0).train()
    x = bag(50)
    masked = gradients(model, x, {"tumor": 1.0, "er": math.nan, "os": (3.0, 1.0)})
    without_er = gradients(model, x, {"tumor": 1.0, "os": (3.0, 1.0)})
    with_er = gradients(model, x, {"tumor": 1.0, "er": 1.0, "os": (3.0, 1.0)})
    for n in masked:  # the NaN task adds exactly nothing, anywhere
        torch.testing.assert_close(masked[n], without_er[n], rtol=0, atol=1e-7, msg=n)
    er_params = head_parameters(model, 1)
    assert er_params, f"{name}: no per-head parameters found"
    assert all(float(masked[n].abs().max()) == 0.0 for n in er_params)
    assert any(float(with_er[n].abs().max()) > 0.0 for n in er_params)  # a known label does reach the head


@pytest.mark.parametrize("name", INSTANCE_LOSS_MODELS)
def test_instance_loss_only_in_training_with_a_label(name):
    torch.manual_seed(0)
    model = create_model(name, DIM, [Head("tumor", 1)], hidden=HIDDEN)
    x = bag(40)
    model.train()
    for label in (0.0, 1.0):
        assert float(model(x, {"tumor": torch.tensor(label)}).instance_loss.detach()) > 0.0
    assert float(model(x, {"tumor": torch.tensor(math.nan)}).instance_loss) == 0.0
    assert float(model(x).instance_loss) == 0.0
    model.eval()
    assert float(model(x, {"tumor": torch.tensor(1.0)}).instance_loss) == 0.0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_single_instance_bag(name):
    torch.manual_seed(0)
    model = create_model(name, DIM, MULTI_HEADS, hidden=HIDDEN)
    x = bag(1)
    model.train()
    out = model(x, {"tumor": torch.tensor(1.0), "er": torch.tensor(0.0)})
    loss = sum(v.sum() for v in out.logits.values()) + out.instance_loss
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        out = model(x)
    for a in out.attention.values():
        assert a.shape == (1,) and torch.isfinite(a).all()
        if name not in IMPORTANCE_ONLY:
            assert float(a[0]) == pytest.approx(1.0)


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operator produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_large_bag_without_quadratic_memory(name):
    n = 20_000
    torch.manual_seed(0)
    model = create_model(name, DIM, [Head("tumor", 1), Head("os", 4)], hidden=HIDDEN).eval()
    x = bag(n)
    with torch.no_grad(), LargestTensor() as probe:
        out = model(x)
    assert probe.largest < n * n // 50, f"{name} built a tensor of {probe.largest} elements"
    for a in out.attention.values():
        assert a.shape == (n,) and torch.isfinite(a).all()
        if name not in IMPORTANCE_ONLY:
            assert abs(float(a.sum()) - 1.0) < 1e-4


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(5, DIM + 1), (DIM,), (0, DIM), (2, 5, DIM)])
def test_bad_input_shape_names_the_shape(name, shape):
    model = create_model(name, DIM, [Head("tumor", 1)], hidden=HIDDEN)
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        model(torch.zeros(shape))


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(InputError) as info:
        create_model("no-such-model", DIM, [Head("tumor", 1)])
    assert "no-such-model" in str(info.value)
    assert all(name in str(info.value) for name in MODELS)
    assert set(ATTENTION_MODELS) | IMPORTANCE_ONLY | {"transmil", "dsmil"} <= set(MODELS)


def test_clam_mb_map_is_the_mean_of_its_branches():
    """Either branch of a binary CLAM-MB head can carry the evidence, so the map averages both."""
    torch.manual_seed(0)
    model = create_model("clam-mb", DIM, [Head("y", 1), Head("os", 4)], hidden=HIDDEN).eval()
    x = bag(30)
    with torch.no_grad():
        out = model(x)
        h = model.encoder(x)
        for i, task in enumerate(("y", "os")):
            branches = torch.softmax(model.attention[i](h), dim=0)
            assert branches.shape[1] == (2 if task == "y" else 4)
            torch.testing.assert_close(out.attention[task], branches.mean(dim=1))


# ------------------------------------------------------------------ TransMIL building blocks


def test_iterative_pinv_matches_the_pseudo_inverse():
    torch.manual_seed(0)
    x = torch.softmax(torch.randn(3, 16, 16), dim=-1)
    torch.testing.assert_close(iterative_pinv(x, iterations=20), torch.linalg.pinv(x), rtol=1e-3, atol=1e-3)


def test_segment_means_and_exact_nystrom_below_landmarks():
    t = torch.arange(10, dtype=torch.float32).reshape(1, 10, 1)
    assert segment_means(t, 4).flatten().tolist() == pytest.approx([1.0, 3.5, 6.0, 8.5])  # segments 3, 2, 3, 2
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 12, 8).unbind(0)
    torch.testing.assert_close(nystrom_attention(q, k, v, landmarks=12), torch.softmax(q @ k.mT, dim=-1) @ v)


def test_nystrom_approximates_softmax_attention():
    """Tokens that vary smoothly along the sequence (as segment-mean landmarks assume), 400 of
    them, 32 landmarks: within 5% of exact softmax attention."""
    torch.manual_seed(0)
    angle = torch.linspace(0, 2 * math.pi, 400)
    q = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).repeat_interleave(4, dim=-1)[None]
    v = torch.randn(1, 400, 8)
    exact = torch.softmax(q @ q.mT, dim=-1) @ v
    approx = nystrom_attention(q, q, v, landmarks=32)
    assert float((approx - exact).norm() / exact.norm()) < 0.05
