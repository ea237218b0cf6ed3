"""Encoders from a folder, without code: ``-e path/to/folder`` with a ``config.json`` naming a timm
architecture, its input size, normalization, pooling and a safetensors weights file.

    {"architecture": "vit_small_patch16_224", "input_size": 224,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "pooling": "token", "weights": "model.safetensors"}

Optional: ``name`` (the features' name in bags; default the folder's name), ``model_args`` (more
keyword arguments for ``timm.create_model``, e.g. ``{"init_values": 1e-5}``). A timm model folder
as the Hugging Face Hub holds it (``config.json`` with ``pretrained_cfg``, ``model.safetensors``)
works as it is: ``input_size``, ``mean`` and ``std`` are taken from ``pretrained_cfg`` and
``pooling`` from ``global_pool`` when not given.

The weights follow the built-in encoders' rules: safetensors only (nothing pickled is read), and
every tensor must fit the architecture (the classifier head, which a headless encoder leaves out
on purpose, is the only thing dropped). A bad config is one line naming the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .spec import EncoderSpec, StateDict, WeightSource

CONFIG = "config.json"
DEFAULT_WEIGHTS = "model.safetensors"
OWN_FIELDS = {"architecture", "input_size", "mean", "std", "pooling", "weights", "name", "model_args"}
# fields of timm's own config.json (Hugging Face Hub layout) that are read or may be present
TIMM_FIELDS = {"pretrained_cfg", "global_pool", "num_classes", "num_features", "label_names", "label_descriptions"}


class EncoderConfigError(InputError):
    """A local encoder's config that cannot be used; ``str()`` names the file and the field."""

    def __init__(self, config: Path, field: str | None, message: str):
        super().__init__(f"{config}: {f'field {field!r}: ' if field else ''}{message}")


def is_encoder_folder(name: str) -> bool:
    """Whether ``-e name`` names a folder (rather than a registry name)."""
    return Path(name).expanduser().is_dir()


def read_config(folder: Path) -> tuple[Path, dict[str, Any]]:
    config = folder / CONFIG
    if not config.is_file():
        raise EncoderConfigError(folder, None, f"an encoder folder needs a {CONFIG} (architecture, input_size, "
                                               "mean, std, pooling, weights)")
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncoderConfigError(config, None, f"not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EncoderConfigError(config, None, "must hold a JSON object")
    unknown = sorted(set(data) - OWN_FIELDS - TIMM_FIELDS)
    if unknown:
        raise EncoderConfigError(config, unknown[0], f"unknown field (known: {', '.join(sorted(OWN_FIELDS))})")
    return config, data


def _field(config: Path, data: dict, key: str, fallback: str | None = None) -> Any:
    """``data[key]``, else timm's ``pretrained_cfg[fallback or key]``; missing is an error."""
    if key in data:
        return data[key]
    pretrained = data.get("pretrained_cfg") or {}
    if isinstance(pretrained, dict) and (fallback or key) in pretrained:
        return pretrained[fallback or key]
    raise EncoderConfigError(config, key, "missing")


def _input_size(config: Path, value: Any) -> int:
    if isinstance(value, list) and len(value) == 3 and value[0] == 3 and value[1] == value[2]:
        value = value[1]  # timm's [channels, height, width]
    if not isinstance(value, int) or isinstance(value, bool) or value < 8:
        raise EncoderConfigError(config, "input_size", f"must be a side in pixels (e.g. 224) or [3, side, side], "
                                                       f"got {value!r}")
    return value


def _triple(config: Path, key: str, value: Any, positive: bool) -> tuple[float, float, float]:
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or (positive and min(value) <= 0) or max(abs(v) for v in value) > 1e3:
        what = "three positive numbers" if positive else "three numbers"
        raise EncoderConfigError(config, key, f"must be {what} (RGB, on the 0-1 scale), got {value!r}")
    return float(value[0]), float(value[1]), float(value[2])


def local_spec(folder: str | Path, taken: set[str] = frozenset()) -> EncoderSpec:
    """The registry entry an encoder folder describes (``taken``: names already registered)."""
    import timm

    folder = Path(folder).expanduser().resolve()
    config, data = read_config(folder)
    arch = _field(config, data, "architecture")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise EncoderConfigError(config, "architecture", f"timm has no architecture {arch!r} "
                                                         "(see timm.list_models())")
    size = _input_size(config, _field(config, data, "input_size"))
    mean = _triple(config, "mean", _field(config, data, "mean"), positive=False)
    std = _triple(config, "std", _field(config, data, "std"), positive=True)
    pooling = data.get("pooling", data.get("global_pool"))
    if pooling is not None and not isinstance(pooling, str):
        raise EncoderConfigError(config, "pooling", f"must be a timm global_pool name (e.g. 'avg', 'token'), "
                                                    f"got {pooling!r}")
    model_args = data.get("model_args", {})
    if not isinstance(model_args, dict):
        raise EncoderConfigError(config, "model_args", "must be an object of timm.create_model keyword arguments")
    weights = data.get("weights", DEFAULT_WEIGHTS)
    if not isinstance(weights, str) or not weights.endswith(".safetensors"):
        raise EncoderConfigError(config, "weights", f"must name a .safetensors file in the folder, got {weights!r} "
                                                    "(pickled checkpoints are not read from encoder folders)")
    weights_path = (folder / weights).resolve()
    if not weights_path.is_file():
        raise EncoderConfigError(config, "weights", f"{weights_path}: no such file")
    name = data.get("name", folder.name)
    if not isinstance(name, str) or not name or "/" in name:
        raise EncoderConfigError(config, "name", f"must be a plain name for the features, got {name!r}")
    if name in taken:
        raise EncoderConfigError(config, "name", f"{name!r} is already another encoder's name; choose another")

    kwargs = {**model_args, **({"global_pool": pooling} if pooling is not None else {})}

    def build() -> nn.Module:
        return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)

    dim = _output_dim(config, build, size, pooling)
    return EncoderSpec(name=name, dim=dim, input_size=size, build=build, mean=mean, std=std,
                       weights=WeightSource(file=str(weights_path), licence="as its owner gives it"),
                       adapt=_drop_classifier, precision="bf16",
                       architecture=f"timm {arch}" + (f", global_pool={pooling!r}" if pooling is not None else ""),
                       description=f"local encoder from {folder}")


def _output_dim(config: Path, build, size: int, pooling: str | None) -> int:
    """The feature size, from a forward pass on the meta device (no memory, no weights)."""
    field = "pooling" if pooling is not None else "architecture"
    try:
        with torch.device("meta"):
            out = build()(torch.empty(1, 3, size, size))
    except Exception as exc:  # noqa: BLE001 - timm raises many types for a config it cannot build
        raise EncoderConfigError(config, field, f"timm cannot build and run it at {size} px: "
                                                f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    if out.ndim != 2:
        raise EncoderConfigError(config, "pooling", f"the model gives {tuple(out.shape)} per batch, not one vector "
                                                    "per patch; choose a pooling such as 'avg' or 'token'")
    return int(out.shape[1])


def _drop_classifier(state: StateDict, model: nn.Module) -> StateDict:
    """Drop the checkpoint's classifier head (a headless encoder leaves it out on purpose)."""
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = head if isinstance(head, list | tuple) else [head]
    expected = model.state_dict()
    return {k: v for k, v in state.items()
            if k in expected or not any(k == h or k.startswith(f"{h}.") for h in heads)}
