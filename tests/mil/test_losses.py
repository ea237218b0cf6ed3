"""Losses (mil.losses): hand-computed values of the discrete-time NLL and the Cox partial
likelihood (Breslow ties), masking of unknown labels, and survival learned from bags with a
known hazard by ABMIL under both losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mil.losses import binary_loss, cox_loss, nll_survival_loss, risk_from_hazards, survival_bins, time_to_bin
from mil.metrics import c_index
from mil.models import Head, create_model
from mil.splits import SplitError

sig = lambda v: 1.0 / (1.0 + math.exp(-v))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ discrete-time NLL

LOGITS = [[0.2, -0.5, 1.0], [-1.0, 0.3, 0.0], [0.5, 0.5, 0.5], [0.1, -0.2, 0.4]]
BINS = [1, 1, 0, 2]
EVENTS = [1.0, 0.0, 1.0, 0.0]


def hand_nll_terms() -> list[float]:
    """Per row: event in bin y -> -log S_{y-1} - log h_y; censored in bin y -> -log S_y."""
    (a, b, c, d) = [[sig(v) for v in row] for row in LOGITS]
    return [
        -math.log(1 - a[0]) - math.log(a[1]),                                # event, bin 1
        -math.log(1 - b[0]) - math.log(1 - b[1]),                            # censored, bin 1
        -math.log(c[0]),                                                     # event, bin 0
        -math.log(1 - d[0]) - math.log(1 - d[1]) - math.log(1 - d[2]),       # censored, last bin
    ]


def test_nll_matches_hand_computation():
    terms = hand_nll_terms()
    logits, bins, events = torch.tensor(LOGITS), torch.tensor(BINS), torch.tensor(EVENTS)
    plain = nll_survival_loss(logits, bins, events, alpha=0.0)
    assert float(plain) == pytest.approx(np.mean(terms), rel=1e-6)
    # alpha up-weights the events' terms: (1 - alpha) * all + alpha * events
    weighted = [t * (1.0 if e else 0.6) for t, e in zip(terms, EVENTS)]
    assert float(nll_survival_loss(logits, bins, events, alpha=0.4)) == pytest.approx(np.mean(weighted), rel=1e-6)


def test_nll_ignores_rows_with_unknown_event():
    logits = torch.tensor([*LOGITS, [3.0, -3.0, 2.0]], requires_grad=True)
    loss = nll_survival_loss(logits, torch.tensor([*BINS, 99]), torch.tensor([*EVENTS, math.nan]), alpha=0.0)
    assert float(loss.detach()) == pytest.approx(np.mean(hand_nll_terms()), rel=1e-6)
    loss.backward()
    assert float(logits.grad[-1].abs().max()) == 0.0 and float(logits.grad[:-1].abs().max()) > 0.0


def test_nll_with_nothing_known_is_a_differentiable_zero():
    logits = torch.tensor([[0.3, 0.1]], requires_grad=True)
    loss = nll_survival_loss(logits, torch.tensor([0]), torch.tensor([math.nan]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(logits.grad.abs().max()) == 0.0


def test_nll_rejects_bins_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        nll_survival_loss(torch.zeros(1, 3), torch.tensor([3]), torch.tensor([1.0]))


# ------------------------------------------------------------------ Cox partial likelihood


def test_cox_matches_breslow_by_hand():
    """Four samples, two events tied at t = 2 (Breslow: both share the risk set {t >= 2}),
    one censored sample that only ever appears in risk sets."""
    time, event, risk = [2.0, 1.0, 3.0, 2.0], [1.0, 1.0, 0.0, 1.0], [0.3, -0.2, 1.1, 0.5]
    e = [math.exp(r) for r in risk]
    at_2 = math.log(e[0] + e[2] + e[3])
    at_1 = math.log(sum(e))
    expected = -((risk[0] - at_2) + (risk[1] - at_1) + (risk[3] - at_2)) / 3
    loss = cox_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # the row order does not matter, and a row with an unknown time is dropped
    order = [3, 0, 2, 1]
    pick = lambda values, extra: torch.tensor([values[i] for i in order] + [extra])
    shuffled = cox_loss(pick(risk, 9.0), pick(time, math.nan), pick(event, 1.0))
    assert float(shuffled) == pytest.approx(expected, rel=1e-6)


def test_cox_without_events_is_a_differentiable_zero():
    risk = torch.tensor([0.5, -0.5], requires_grad=True)
    loss = cox_loss(risk, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(risk.grad.abs().max()) == 0.0


# ------------------------------------------------------------------ small helpers


def test_binary_loss_masks_unknown_labels():
    logit = torch.tensor([0.5, -1.0, 2.0])
    loss = binary_loss(logit, torch.tensor([1.0, math.nan, 0.0]))
    expected = -(math.log(sig(0.5)) + math.log(1 - sig(2.0))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    weighted = binary_loss(logit, torch.tensor([1.0, math.nan, 0.0]), pos_weight=3.0)
    assert float(weighted) == pytest.approx(-(3 * math.log(sig(0.5)) + math.log(1 - sig(2.0))) / 2, rel=1e-6)


def test_bins_and_risk_order():
    times = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    edges = survival_bins(times, np.array([1, 1, 1, 1, 1, 0]), n_bins=2)
    assert edges[0] == -np.inf and edges[-1] == np.inf and edges[1] == pytest.approx(3.0)
    assert time_to_bin(np.array([0.5, 2.9, 3.0, 1e9]), edges).tolist() == [0, 0, 1, 1]
    with pytest.raises(SplitError, match="uncensored"):
        survival_bins(times, np.zeros(6))
    hazards = torch.tensor([[-2.0, -2.0, -2.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    risk = risk_from_hazards(hazards)
    assert risk[0] < risk[1] < risk[2]  # higher hazard = higher risk


# ------------------------------------------------------------------ survival with a known hazard

DIM = 32


def survival_bags(n: int, seed: int):
    """Bags of 40-100 noise instances of which a share f ~ U(0, 0.2) is shifted along a fixed
    direction; log-hazard 40 (f - 0.1); exponential event times, exponential censoring (~30%)."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(1234).standard_normal(DIM)
    direction /= np.linalg.norm(direction)
    bags, log_hazard = [], []
    for _ in range(n):
        size = int(rng.integers(40, 101))
        k = round(rng.uniform(0.0, 0.2) * size)
        x = rng.standard_normal((size, DIM)).astype(np.float32)
        x[rng.choice(size, k, replace=False)] += (6.0 * direction).astype(np.float32)
        bags.append(torch.from_numpy(x))
        log_hazard.append(40.0 * (k / size - 0.1))
    log_hazard = np.array(log_hazard)
    event_time = rng.exponential(np.exp(-log_hazard))
    censor_time = rng.exponential(1 / 0.3, n)
    return bags, np.minimum(event_time, censor_time), (event_time <= censor_time).astype(float), log_hazard


@pytest.fixture(scope="module")
def survival_data():
    return survival_bags(160, seed=0), survival_bags(80, seed=1)


def test_survival_data_is_as_designed(survival_data):
    (_, _, event, _), (_, time, test_event, log_hazard) = survival_data
    assert 0.2 <= 1 - event.mean() <= 0.45
    assert c_index(time, log_hazard, test_event) >= 0.8  # what a perfect model would reach


@pytest.mark.parametrize("loss_name, epochs, batch, lr", [("nll", 20, 8, 3e-3), ("cox", 10, 16, 1e-3)])
def test_abmil_learns_a_known_hazard(survival_data, loss_name, epochs, batch, lr):
    """Held-out c-index >= 0.7 (seeds 0-2 give 0.76-0.78 for the NLL, which overfits more
    than Cox's rank-based loss, and 0.85 for Cox; the true log-hazard gives 0.87)."""
    (bags, time, event, _), (test_bags, test_time, test_event, _) = survival_data
    torch.manual_seed(0)
    model = create_model("abmil", DIM, [Head("os", 4 if loss_name == "nll" else 1)], hidden=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    bins = torch.from_numpy(time_to_bin(time, survival_bins(time, event, 4)))
    time_t, event_t = torch.tensor(time), torch.tensor(event)
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(bags)))
        for start in range(0, len(bags), batch):
            idx = order[start:start + batch]
            out = torch.stack([model(bags[i]).logits["os"] for i in idx])
            if loss_name == "nll":
                loss = nll_survival_loss(out, bins[idx], event_t[idx])
            else:
                loss = cox_loss(out[:, 0], time_t[idx], event_t[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        out = torch.stack([model(x).logits["os"] for x in test_bags])
    risk = risk_from_hazards(out) if loss_name == "nll" else out[:, 0]
    assert c_index(test_time, risk.numpy(), test_event) >= 0.7
