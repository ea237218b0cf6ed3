"""CLAM (Lu et al. 2021, "Data-efficient and weakly supervised computational pathology on
whole-slide images"), written from the paper: gated attention pooling plus an
instance-level clustering loss.

Per task, in training with a known binary label y: the k instances with the highest
attention are pseudo-labelled "class y" and the k lowest "not class y", and the instance
classifier of class y is trained on them (cross-entropy, or the smooth top-1 SVM with
``instance_loss="svm"``). k = ``k_sample`` (8), capped at N // 2 so the two sets never
overlap; a bag with one instance gets no instance loss. As in CLAM for binary problems
(``subtyping=False``), the other class's classifier is not trained on the bag.

- ``clam-sb``: one attention branch per task; the bag vector feeds a linear head.
- ``clam-mb``: one attention branch per class. A single-output head (binary logit or Cox
  risk) has two branches, "low" and "high", each with its own bag vector and scalar
  classifier, and outputs their difference (the two-class softmax as one logit). A head
  with K > 1 outputs (hazard bins) has K branches, output k from branch k. The map of a
  head is the mean of its branches: the two-class softmax is symmetric, so training may put
  the evidence in either the "low" or the "high" branch (the other then attends elsewhere),
  and only the mean reliably shows where the model looks.

A head with several outputs also returns per-output maps: clam-mb its branches' attention,
clam-sb each instance's share a_i W_k h_i of output k (as ABMIL).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathology.errors import InputError

from .abmil import AttentionNet
from .base import Head, MILModel, MILOutput, binary_label, register_model

INSTANCE_LOSSES = ("ce", "svm")


class CLAM(MILModel):
    """Shared parts of CLAM-SB and CLAM-MB; ``multi_branch`` selects the variant."""

    multi_branch = False

    def __init__(self, in_dim: int, heads: Sequence[Head], *, hidden: int = 256, dropout: float = 0.25,
                 attention_dim: int | None = None, k_sample: int = 8, instance_loss: str = "ce"):
        super().__init__(in_dim, heads, hidden=hidden, dropout=dropout)
        if instance_loss not in INSTANCE_LOSSES:
            raise InputError(f"unknown CLAM instance loss {instance_loss!r}; choose from {', '.join(INSTANCE_LOSSES)}")
        if k_sample < 1:
            raise InputError(f"k_sample must be >= 1, got {k_sample}")
        self.k_sample, self.instance_loss_kind = k_sample, instance_loss
        attention_dim = attention_dim or max(hidden // 2, 1)
        self.attention = nn.ModuleList(
            AttentionNet(hidden, attention_dim, self.branches(head), gated=True, dropout=dropout)
            for head in self.heads)
        self.classifiers = nn.ModuleList(
            nn.Linear(hidden, self.branches(head) if self.multi_branch else head.n_outputs) for head in self.heads)
        # per class, an instance classifier "class c" vs "not class c"; only heads that can carry a binary label
        self.instance_classifiers = nn.ModuleList(
            nn.ModuleList(nn.Linear(hidden, 2) for _ in range(2 if head.n_outputs == 1 else 0)) for head in self.heads)

    def branches(self, head: Head) -> int:
        """Number of attention branches of a head."""
        if not self.multi_branch:
            return 1
        return 2 if head.n_outputs == 1 else head.n_outputs

    def aggregate(self, h: Tensor, labels: dict[str, Tensor] | None) -> MILOutput:
        logits, attention, per_output = {}, {}, {}
        instance_loss = h.new_zeros(())
        for head, attend, classifier, instance_classifiers in zip(
                self.heads, self.attention, self.classifiers, self.instance_classifiers):
            scores = attend(h)                        # (N, branches)
            weights = torch.softmax(scores, dim=0)
            if self.multi_branch:
                bags = weights.T @ h                  # (branches, hidden): one bag vector per class
                per_branch = (bags * classifier.weight).sum(dim=1) + classifier.bias
                logits[head.name] = (per_branch[1] - per_branch[0]).reshape(1) if head.n_outputs == 1 else per_branch
                attention[head.name] = weights.mean(dim=1)
                if head.n_outputs > 1:
                    per_output[head.name] = weights
            else:
                logits[head.name] = classifier(weights[:, 0] @ h)
                attention[head.name] = weights[:, 0]
                if head.n_outputs > 1:
                    per_output[head.name] = weights[:, :1] * (h @ classifier.weight.T)
            label = binary_label(labels, head.name)
            if label is not None and len(instance_classifiers):
                branch = scores[:, label if self.multi_branch else 0]
                instance_loss = instance_loss + self.clustering_loss(h, branch, instance_classifiers[label])
        return MILOutput(logits, attention, instance_loss, per_output)

    def clustering_loss(self, h: Tensor, scores: Tensor, classifier: nn.Linear) -> Tensor:
        """Instance loss of one task: top-k attended instances are positives of ``classifier``,
        bottom-k negatives; 0 when the bag has fewer than two instances."""
        k = min(self.k_sample, len(h) // 2)
        if k == 0:
            return h.new_zeros(())
        top = torch.topk(scores, k).indices
        bottom = torch.topk(-scores, k).indices
        instance_logits = classifier(h[torch.cat([top, bottom])])
        targets = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
        if self.instance_loss_kind == "svm":  # smooth top-1 SVM (tau = 1, margin 1): CE on margin-shifted scores
            instance_logits = instance_logits + 1.0 - F.one_hot(targets, 2).to(instance_logits.dtype)
        return F.cross_entropy(instance_logits, targets)


@register_model("clam-sb")
class CLAMSingleBranch(CLAM):
    """CLAM with one attention branch per task."""


@register_model("clam-mb")
class CLAMMultiBranch(CLAM):
    """CLAM with one attention branch (and bag classifier) per class."""

    multi_branch = True
