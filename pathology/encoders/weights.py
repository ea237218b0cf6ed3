"""Find, read and apply encoder weights: local files only, never pickle code, never a partial load."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import UserError
from ..safeload import RefusedPickleError, load_tensors
from .spec import EncoderSpec, StateDict

log = logging.getLogger(__name__)

CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "teacher")


class WeightsError(UserError):
    """Weights that cannot be found, read or applied (one line naming the file)."""


def cache_candidates(spec: EncoderSpec) -> list[Path]:
    """Where ``spec``'s weights would be in the local caches (nothing is downloaded)."""
    source, found = spec.weights, []
    if source.file:
        found.append(Path(source.file))
    if source.hf_repo and source.hf_file:
        from huggingface_hub import constants, try_to_load_from_cache
        hit = try_to_load_from_cache(source.hf_repo, source.hf_file)
        found.append(Path(hit) if isinstance(hit, str) else
                     Path(constants.HF_HUB_CACHE) / f"models--{source.hf_repo.replace('/', '--')}" / "snapshots"
                     / "<revision>" / source.hf_file)
    if source.url:
        found.append(Path(torch.hub.get_dir()) / "checkpoints" / source.file_name)
    return found


def locate_weights(spec: EncoderSpec, weights: str | Path | None = None) -> Path | None:
    """The weights file to load: ``weights`` if given, else the local cache; None for an
    encoder without weights. Raises :class:`WeightsError` saying where it looked and how
    to provide the file."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file")
        return path
    if not spec.weights.needed:
        return None
    candidates = cache_candidates(spec)
    for path in candidates:
        if path.is_file():
            return path
    looked = " or ".join(str(p) for p in candidates)
    if spec.weights.file:
        raise WeightsError(f"encoder {spec.name}: weights not found (looked for {looked}); pass --weights FILE")
    raise WeightsError(f"encoder {spec.name}: weights not found (looked for {looked}); pass --weights FILE "
                       f"or run `pathology encoders fetch {spec.name}`")


def read_checkpoint(path: Path) -> StateDict:
    """Tensors of a safetensors file, or of a PyTorch checkpoint read with
    ``weights_only=True`` (a pickle that would run code is refused)."""
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else load_tensors(path)
    except RefusedPickleError as exc:
        raise WeightsError(f"{path}: refused to load: {exc}; save it as safetensors or a plain state dict") from None
    except Exception as exc:  # noqa: BLE001 - safetensors/torch raise many types for a corrupt file
        raise WeightsError(f"{path}: cannot read weights: {' '.join(str(exc).split())[:200]}") from None
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> StateDict:
    """The state dict inside common training-checkpoint containers; DataParallel's
    ``module.`` prefix removed."""
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def apply_weights(model: nn.Module, spec: EncoderSpec, state: StateDict, path: Path, assign: bool = False) -> None:
    """Load ``state`` (after the entry's adapter) into ``model``; every key must fit.
    ``assign`` adopts the tensors (for a model built on the meta device), cast to the
    architecture's dtypes."""
    if spec.adapt is not None:
        try:
            state = spec.adapt(state, model)
        except (ValueError, KeyError) as exc:
            raise WeightsError(f"{path}: does not fit {spec.name}: {exc}") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(items)} {what} (e.g. {', '.join(items[:3])})"
                 for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
        raise WeightsError(f"{path}: does not fit {spec.name} ({spec.architecture}): {'; '.join(parts)}")
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


def parameters_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state (names and bytes), for encoders whose weights are built in."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
