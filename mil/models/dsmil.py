"""DSMIL (Li, Li & Eliceiri 2021, "Dual-stream multiple instance learning network"),
written from the paper. Per task and output class: an instance classifier picks the
critical instance (highest score); every instance attends to it by the similarity of
their queries, softmax over instances; the attention-weighted bag embeddings of all
classes feed the bag classifier. In training with a known binary label, the BCE of the
critical instance's score is the model's ``instance_loss`` (the paper's max-pooling
stream, which trains the instance classifier). The attention map is the DSMIL attention
(the mean over classes for a head with several outputs, whose per-class attention is also
returned as per-output maps)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Head, MILModel, MILOutput, binary_label, register_model


class DSMILHead(nn.Module):
    """Both streams of one task with ``n_outputs`` classes."""

    def __init__(self, hidden: int, n_outputs: int, query_dim: int):
        super().__init__()
        self.instance_classifier = nn.Linear(hidden, n_outputs)
        self.query = nn.Sequential(nn.Linear(hidden, query_dim), nn.ReLU(), nn.Linear(query_dim, query_dim), nn.Tanh())
        self.bag_classifier = nn.Linear(n_outputs * hidden, n_outputs)  # the paper's Conv1d over class embeddings
        self.scale = 1.0 / math.sqrt(query_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(bag logits (C,), attention (N, C), critical-instance logits (C,)) for encoded instances (N, hidden)."""
        instance_logits = self.instance_classifier(h)                        # (N, C)
        critical_logits, critical = instance_logits.max(dim=0)               # (C,), (C,)
        queries = self.query(h)                                              # (N, Q)
        attention = torch.softmax(queries @ queries[critical].T * self.scale, dim=0)  # (N, C)
        bag_embeddings = attention.T @ h                                     # (C, hidden)
        return self.bag_classifier(bag_embeddings.reshape(-1)), attention, critical_logits


@register_model("dsmil")
class DSMIL(MILModel):
    """Dual-stream MIL with one DSMIL head per task."""

    def __init__(self, in_dim: int, heads: Sequence[Head], *, hidden: int = 256, dropout: float = 0.25,
                 query_dim: int | None = None):
        super().__init__(in_dim, heads, hidden=hidden, dropout=dropout)
        query_dim = query_dim or max(hidden // 2, 1)
        self.streams = nn.ModuleList(DSMILHead(hidden, head.n_outputs, query_dim) for head in self.heads)

    def aggregate(self, h: Tensor, labels: dict[str, Tensor] | None) -> MILOutput:
        logits, attention, per_output = {}, {}, {}
        instance_loss = h.new_zeros(())
        for head, stream in zip(self.heads, self.streams):
            logits[head.name], weights, critical_logits = stream(h)
            attention[head.name] = weights[:, 0] if head.n_outputs == 1 else weights.mean(dim=1)
            if head.n_outputs > 1:
                per_output[head.name] = weights
            label = binary_label(labels, head.name)
            if label is not None and head.n_outputs == 1:
                instance_loss = instance_loss + F.binary_cross_entropy_with_logits(
                    critical_logits, critical_logits.new_full((1,), float(label)))
        return MILOutput(logits, attention, instance_loss, per_output)

    def output_layer(self, index: int) -> nn.Linear | None:
        return self.streams[index].bag_classifier
