"""What every MIL model shares: task heads, the output record, the shared instance
encoder, and the registry that ``create_model`` looks names up in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

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
    # task -> (N, n_outputs): per-output maps of a multi-output head, where the model has them (see each model)
    class_attention: dict[str, Tensor] = field(default_factory=dict)


class MILModel(nn.Module, ABC):
    """A bag classifier: ONE shared instance encoder (Linear in_dim->hidden, ReLU, Dropout)
    feeding a separate aggregation head per task (subclasses build those in ``__init__``
    and implement :meth:`aggregate`). One bag at a time: ``x`` is (N, in_dim).

    Inputs are scaled as ``clamp((x - input_mean) * input_scale, -input_clip, input_clip)``
    (buffers fitted on the training bags, so the saved weights carry them). With clinical
    covariates (:meth:`add_covariates`), each task's output adds a linear map of the encoded
    covariate vector: the same as concatenating the covariates with the task's pooled slide
    embedding before its linear head."""

    # buffers added after 0.1.0, with the value that reproduces a run written before them
    LATER_BUFFERS: ClassVar[dict[str, float]] = {"input_clip": float("inf")}

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
        self.register_buffer("input_clip", torch.tensor(float("inf")))
        self.n_covariates = 0
        self.covariate_heads: nn.ModuleList | None = None
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Weights written before a buffer existed load with the buffer's neutral value."""
        for name, value in self.LATER_BUFFERS.items():
            state_dict.setdefault(prefix + name, torch.tensor(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_input_normalization(self, mean: Tensor, std: Tensor, clip: float | None = None) -> None:
        """Scale inputs as ``(x - mean) / std`` (features with std ~0 are only centred), then
        clip to ``[-clip, clip]`` (None: no clipping)."""
        std = torch.as_tensor(std, dtype=torch.float32)
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_scale.copy_(torch.where(std > 1e-6, 1.0 / std.clamp_min(1e-6), torch.ones_like(std)))
        self.input_clip.fill_(float("inf") if clip is None else float(clip))

    def add_covariates(self, n: int) -> None:
        """Fuse ``n`` encoded clinical covariates into every head: a linear map (no bias) per task
        from the covariate vector to the head's outputs, added to them."""
        if n < 1:
            raise ValueError(f"n_covariates must be positive, got {n}")
        self.n_covariates = n
        self.covariate_heads = nn.ModuleList(nn.Linear(n, head.n_outputs, bias=False) for head in self.heads)
        for layer in self.covariate_heads:
            nn.init.zeros_(layer.weight)      # start from the image model; training adds what the covariates carry

    def output_layer(self, index: int) -> nn.Linear | None:
        """Head ``index``'s last linear layer, whose outputs are the head's, or None when the
        model has no single one (then training starts it as it was built)."""
        classifiers = getattr(self, "classifiers", None)
        layer = classifiers[index] if classifiers is not None else None
        linear = isinstance(layer, nn.Linear) and layer.bias is not None
        return layer if linear and layer.out_features == self.heads[index].n_outputs else None

    def output_bias(self, index: int) -> Tensor | None:
        """The bias of head ``index``'s outputs (used to start a survival head at the baseline
        hazard), or None."""
        layer = self.output_layer(index)
        return None if layer is None else layer.bias

    def forward(self, x: Tensor, labels: dict[str, Tensor] | None = None,
                covariates: Tensor | None = None) -> MILOutput:
        """Logits and per-instance attention for every task of one bag ``x`` (N, in_dim).
        ``labels`` (task -> scalar label, NaN = unknown) feed only auxiliary instance losses;
        ``covariates`` (n_covariates,) is the bag's encoded clinical vector, when the model has them."""
        if x.dim() != 2 or x.shape[1] != self.in_dim or x.shape[0] < 1:
            raise ValueError(f"{type(self).__name__} expects one bag of shape (N >= 1, {self.in_dim}), "
                             f"got {tuple(x.shape)}")
        x = (x - self.input_mean.to(x.dtype)) * self.input_scale.to(x.dtype)
        if torch.isfinite(self.input_clip):
            clip = float(self.input_clip)
            x = x.clamp(-clip, clip)
        out = self.aggregate(self.encoder(x), labels if self.training else None)
        if self.covariate_heads is not None:
            if covariates is None or covariates.shape != (self.n_covariates,):
                raise ValueError(f"{type(self).__name__} was built with {self.n_covariates} covariates, got "
                                 f"{None if covariates is None else tuple(covariates.shape)}")
            c = covariates.to(device=x.device, dtype=torch.float32)
            for head, layer in zip(self.heads, self.covariate_heads):
                out.logits[head.name] = out.logits[head.name] + layer(c).to(out.logits[head.name].dtype)
        return out

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
                 n_covariates: int = 0, **kwargs) -> MILModel:
    """The registered model ``name`` for bags of ``in_dim`` features with the given task heads,
    fusing ``n_covariates`` encoded clinical covariates when positive; ``kwargs`` go to the
    model (e.g. ``k_sample`` for CLAM). Unknown names raise InputError listing the registered ones."""
    if name not in MODELS:
        raise InputError(f"unknown MIL model {name!r}; choose from {', '.join(sorted(MODELS))}")
    model = MODELS[name](in_dim, heads, hidden=hidden, dropout=dropout, **kwargs)
    if n_covariates:
        model.add_covariates(n_covariates)
    return model
