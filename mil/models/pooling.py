"""Pooling baselines: the shared encoder, then mean or max over instances, then a linear
head per task. The importance of an instance is its own head score (the head applied to
the instance instead of the pooled vector); a head with several outputs also returns each
output's instance scores as per-output maps."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Head, MILModel, MILOutput, instance_importance, register_model


class PoolingMIL(MILModel):
    """Encoder -> pool (``reduce``) -> per-task linear head."""

    def __init__(self, in_dim: int, heads: Sequence[Head], *, hidden: int = 256, dropout: float = 0.25):
        super().__init__(in_dim, heads, hidden=hidden, dropout=dropout)
        self.classifiers = nn.ModuleList(nn.Linear(hidden, head.n_outputs) for head in self.heads)

    @abstractmethod
    def reduce(self, h: Tensor) -> Tensor:
        """(N, hidden) -> (hidden,)."""

    def aggregate(self, h: Tensor, labels: dict[str, Tensor] | None) -> MILOutput:
        pooled = self.reduce(h)
        logits, attention, per_output = {}, {}, {}
        for head, classifier in zip(self.heads, self.classifiers):
            logits[head.name] = classifier(pooled)
            scores = classifier(h)
            attention[head.name] = instance_importance(scores)
            if head.n_outputs > 1:
                per_output[head.name] = scores
        return MILOutput(logits, attention, h.new_zeros(()), per_output)


@register_model("mean")
class MeanPoolMIL(PoolingMIL):
    """Mean of the encoded instances."""

    def reduce(self, h: Tensor) -> Tensor:
        return h.mean(dim=0)


@register_model("max")
class MaxPoolMIL(PoolingMIL):
    """Feature-wise maximum of the encoded instances."""

    def reduce(self, h: Tensor) -> Tensor:
        return torch.amax(h, dim=0)
