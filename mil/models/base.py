"""What every MIL model shares: task heads, the output record, the shared instance
encoder, and the registry that ``create_model`` looks names up in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pathology.errors import InputError

from ..losses import risk_from_hazards


@dataclass(frozen=True)
class Head:
    """One prediction task of a model."""

    name: str        # task name, e.g. "er" or "survival"
    n_outputs: int   # 1 for a binary logit or a Cox risk; the number of time bins for discrete-time survival


@dataclass
class MILOutput:
    """A model's answer for one bag."""

    logits: dict[str, Tensor]     # task -> (n_outputs,)
    attention: dict[str, Tensor]  # task -> (N,): softmax weights (sum 1), or an importance score (non-attention models)
    instance_loss: Tensor         # scalar auxiliary loss (CLAM clustering, DSMIL max-instance) in training, else 0


class MILModel(nn.Module, ABC):
    """A bag classifier: ONE shared instance encoder (Linear in_dim->hidden, ReLU, Dropout)
    feeding a separate aggregation head per task (subclasses build those in ``__init__``
    and implement :meth:`aggregate`). One bag at a time: ``x`` is (N, in_dim)."""

    def __init__(self, in_dim: int, heads: Sequence[Head], *, hidden: int = 256, dropout: float = 0.25):
        super().__init__()
        self.heads: tuple[Head, ...] = check_heads(heads)
        if in_dim < 1 or hidden < 1:
            raise InputError(f"in_dim and hidden must be positive, got in_dim={in_dim}, hidden={hidden}")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.hidden, self.dropout = in_dim, hidden, dropout
        # feature standardization fitted on the training bags (identity until set); buffers, so
        # the saved weights carry it and prediction applies exactly what training saw
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_scale", torch.ones(in_dim))
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))

    def set_input_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Standardize inputs as ``(x - mean) / std`` (features with std ~0 are only centred)."""
        std = torch.as_tensor(std, dtype=torch.float32)
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_scale.copy_(torch.where(std > 1e-6, 1.0 / std.clamp_min(1e-6), torch.ones_like(std)))

    def forward(self, x: Tensor, labels: dict[str, Tensor] | None = None) -> MILOutput:
        """Logits and per-instance attention for every task of one bag ``x`` (N, in_dim).
        ``labels`` (task -> scalar label, NaN = unknown) feed only auxiliary instance losses."""
        if x.dim() != 2 or x.shape[1] != self.in_dim or x.shape[0] < 1:
            raise ValueError(f"{type(self).__name__} expects one bag of shape (N >= 1, {self.in_dim}), "
                             f"got {tuple(x.shape)}")
        x = (x - self.input_mean.to(x.dtype)) * self.input_scale.to(x.dtype)
        return self.aggregate(self.encoder(x), labels if self.training else None)

    @abstractmethod
    def aggregate(self, h: Tensor, labels: dict[str, Tensor] | None) -> MILOutput:
        """Per-task pooling of the encoded instances ``h`` (N, hidden); ``labels`` is None outside training."""


def check_heads(heads: Sequence[Head]) -> tuple[Head, ...]:
    """The heads as a tuple, or ValueError if there are none, names repeat, or a size is < 1."""
    heads = tuple(heads)
    if not heads:
        raise ValueError("a MIL model needs at least one head")
    names = [h.name for h in heads]
    if len(set(names)) != len(names):
        raise ValueError(f"head names must be unique, got {names}")
    for h in heads:
        if h.n_outputs < 1:
            raise ValueError(f"head {h.name!r} needs n_outputs >= 1, got {h.n_outputs}")
    return heads


def binary_label(labels: dict[str, Tensor] | None, task: str) -> int | None:
    """The task's label as 0/1 when it is a known scalar, else None (absent, NaN, or a survival pair)."""
    if labels is None or task not in labels:
        return None
    label = torch.as_tensor(labels[task])
    if label.numel() != 1 or torch.isnan(label).item():
        return None
    return int(label.item() > 0.5)


def instance_importance(scores: Tensor) -> Tensor:
    """One importance per instance from per-instance head outputs (N, n_outputs): the logit
    or risk itself for one output, the risk of the hazards (higher = worse) for several."""
    return scores[:, 0] if scores.shape[1] == 1 else risk_from_hazards(scores)


MODELS: dict[str, Callable[..., MILModel]] = {}


def register_model(name: str) -> Callable[[type[MILModel]], type[MILModel]]:
    """Class decorator adding a model to :data:`MODELS` under ``name``."""
    def add(cls: type[MILModel]) -> type[MILModel]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = cls
        cls.model_name = name
        return cls
    return add


def create_model(name: str, in_dim: int, heads: Sequence[Head], *, hidden: int = 256, dropout: float = 0.25,
                 **kwargs) -> MILModel:
    """The registered model ``name`` for bags of ``in_dim`` features with the given task heads;
    ``kwargs`` go to the model (e.g. ``k_sample`` for CLAM). Unknown names raise InputError
    listing the registered ones."""
    if name not in MODELS:
        raise InputError(f"unknown MIL model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[name](in_dim, heads, hidden=hidden, dropout=dropout, **kwargs)
