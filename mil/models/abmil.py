"""Attention-based deep MIL (Ilse, Tomczak & Welling 2018): per task, softmax attention
over the encoded instances, a weighted mean, and a linear head. ``gated-abmil`` multiplies
the tanh branch by a sigmoid gate (the paper's gated attention).

A head with several outputs (classes) also returns per-output maps: each instance's share
a_i W_k h_i of output k (the shares sum to the output less its bias), so a class's map shows
the patches that speak for it and, negative, against it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Head, MILModel, MILOutput, register_model


class AttentionNet(nn.Module):
    """Attention scores (N, branches) of encoded instances (N, dim):
    w^T tanh(V h), or w^T (tanh(V h) * sigmoid(U h)) when ``gated``."""

    def __init__(self, dim: int, attention_dim: int, branches: int = 1, *, gated: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.value = nn.Sequential(nn.Linear(dim, attention_dim), nn.Tanh(), nn.Dropout(dropout))
        self.gate = nn.Sequential(nn.Linear(dim, attention_dim), nn.Sigmoid(), nn.Dropout(dropout)) if gated else None
        self.score = nn.Linear(attention_dim, branches)

    def forward(self, h: Tensor) -> Tensor:
        a = self.value(h)
        if self.gate is not None:
            a = a * self.gate(h)
        return self.score(a)


@register_model("abmil")
class ABMIL(MILModel):
    """Per task: attention weights a = softmax(scores), bag vector a^T h, linear head."""

    gated = False

    def __init__(self, in_dim: int, heads: Sequence[Head], *, hidden: int = 256, dropout: float = 0.25,
                 attention_dim: int | None = None):
        super().__init__(in_dim, heads, hidden=hidden, dropout=dropout)
        attention_dim = attention_dim or max(hidden // 2, 1)
        self.attention = nn.ModuleList(AttentionNet(hidden, attention_dim, gated=self.gated) for _ in self.heads)
        self.classifiers = nn.ModuleList(nn.Linear(hidden, head.n_outputs) for head in self.heads)

    def aggregate(self, h: Tensor, labels: dict[str, Tensor] | None) -> MILOutput:
        logits, attention, per_output = {}, {}, {}
        for head, attend, classifier in zip(self.heads, self.attention, self.classifiers):
            a = torch.softmax(attend(h)[:, 0], dim=0)
            logits[head.name] = classifier(a @ h)
            attention[head.name] = a
            if head.n_outputs > 1:
                per_output[head.name] = a[:, None] * (h @ classifier.weight.T)
        return MILOutput(logits, attention, h.new_zeros(()), per_output)


@register_model("gated-abmil")
class GatedABMIL(ABMIL):
    """ABMIL with gated attention."""

    gated = True
