"""A ready-to-run encoder: architecture + weights on a device, with its preprocessing."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..hashing import file_sha256
from ..memory import reuse_freed_memory
from .registry import get_spec
from .spec import EncoderSpec
from .weights import apply_weights, locate_weights, parameters_sha256, read_checkpoint

log = logging.getLogger(__name__)

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then the CPU; or an explicit torch device string."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise InputError(f"unknown device {name!r}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def select_precision(spec: EncoderSpec, device: torch.device, precision: str = "auto") -> str:
    """Autocast precision: the entry's preference on a GPU, fp32 on the CPU (bf16 autocast is
    several times slower than fp32 on CPUs without AVX-512 BF16); bf16 falls back to fp16 on
    GPUs without bf16 support."""
    if precision == "auto":
        if device.type == "cpu":
            return "fp32"
        precision = spec.precision
        if device.type == "mps" and precision == "bf16":
            precision = "fp16"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        precision = "fp16"
    if precision not in ("fp32", *AUTOCAST):
        raise InputError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    return precision


@dataclass
class Encoder:
    """An encoder ready to embed uint8 RGB patches (B, H, W, 3) into float32 (B, dim)."""

    spec: EncoderSpec
    model: nn.Module
    device: torch.device
    precision: str
    weights_sha256: str
    weights_path: Path | None

    def __post_init__(self) -> None:
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1) * 255.0

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) → float32 (B, 3, s, s), resized (antialiased) and normalized."""
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        size = self.spec.input_size
        if size is not None and x.shape[-2:] != (size, size):
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self.spec.channels_last else x

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST[self.precision])

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(batch)
        with self._autocast():
            return self.model(x).float()

    def feature_attrs(self) -> dict[str, Any]:
        """The attrs of ``/features/<encoder>`` (docs/architecture.md, "Bags") plus how the features were made."""
        size = self.spec.input_size
        return {"encoder": self.spec.name, "weights_sha256": self.weights_sha256, "dim": self.spec.dim,
                "input_size": -1 if size is None else size, "mean": list(self.spec.mean), "std": list(self.spec.std),
                "precision": self.precision, "device": self.device.type}


def _build_with(spec: EncoderSpec, path: Path) -> nn.Module:
    """The architecture holding the checkpoint's tensors. Built on the meta device and
    assigned, so a billion-parameter ViT is not first initialized at random (tens of
    seconds on a CPU); rebuilt for real if some buffer is not in the checkpoint."""
    state = read_checkpoint(path)
    with torch.device("meta"):
        model = spec.build()
    apply_weights(model, spec, state, path, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = spec.build()
        apply_weights(model, spec, state, path)
    return model


def load_encoder(name: str, weights: str | Path | None = None, *, random_weights: bool = False,
                 device: str = "auto", precision: str = "auto", compile: bool = False) -> Encoder:
    """Build ``name`` from the registry and load its weights (``weights``, else the local
    cache; ``random_weights`` skips loading, for tests and benchmarks only). On the CPU the
    process then keeps freed memory for reuse (:mod:`pathology.memory`): batches run up to
    twice as fast."""
    spec = get_spec(name)
    path = None if random_weights else locate_weights(spec, weights)  # before building: fail fast
    if path is None:
        model = spec.build()
        sha = "random" if random_weights else parameters_sha256(model)
    else:
        model = _build_with(spec, path)
        sha = file_sha256(path)
    torch_device = select_device(device)
    if torch_device.type == "cpu":
        reuse_freed_memory()
    model.eval().to(torch_device)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    chosen = select_precision(spec, torch_device, precision)
    log.info("encoder %s on %s (%s), weights %s", spec.name, torch_device, chosen, path or sha)
    return Encoder(spec, model, torch_device, chosen, sha, path)
