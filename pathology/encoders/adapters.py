"""Turn checkpoints as publishers distribute them into our architectures' state dicts.

Every adapter changes only what it names (dropped layers, renamed keys, a resampled
position grid); anything else that does not fit is left for the strict load to reject.
"""

from __future__ import annotations

import logging
import math
import re

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

from .spec import StateDict

log = logging.getLogger(__name__)


def drop_prefixes(*prefixes: str):
    """An adapter that removes the layers a truncated architecture leaves out on purpose
    (e.g. ResNet-50's ``layer4.`` and ``fc.`` for the layer-3 trunk)."""

    def adapt(state: StateDict, model: nn.Module) -> StateDict:
        dropped = [k for k in state if k.startswith(prefixes)]
        log.debug("dropping %d checkpoint tensors under %s", len(dropped), ", ".join(prefixes))
        return {k: v for k, v in state.items() if not k.startswith(prefixes)}

    return adapt


def add_prefix(prefix: str):
    """An adapter for a wrapped architecture: the publisher's keys (e.g. timm's ``blocks.0…``)
    live under ``prefix`` in ours; keys that already carry it (our own saves) are kept."""

    def adapt(state: StateDict, model: nn.Module) -> StateDict:
        return {k if k.startswith(prefix) else prefix + k: v for k, v in state.items()}

    return adapt


def resample_like_dino(pos_embed: torch.Tensor, new_size: list[int], num_prefix_tokens: int) -> torch.Tensor:
    """A square position grid resampled as DINO-style ViTs do it at run time, e.g. CONCH v1.5's
    reference code, which keeps the 224-px grid of its checkpoint and interpolates it for each
    448-px input: bicubic without antialiasing, at a scale factor of (new + 0.1) / old (DINO's
    guard against rounding down). Doing the same once at load time gives the publisher's features."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old, dim = math.isqrt(grid.shape[1]), grid.shape[-1]
    if old * old != grid.shape[1]:
        raise ValueError(f"position grid of {grid.shape[1]} tokens is not square")
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, scale_factor=tuple((n + 0.1) / old for n in new_size), mode="bicubic",
                         align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def fit_pos_embed(key: str = "pos_embed", module: str = "", resample=resample_abs_pos_embed):
    """An adapter that resamples a ViT's absolute position grid when the checkpoint was
    saved for another input size (e.g. CONCH v1.5 runs at 448 px): as timm does by default,
    or with ``resample`` (``resample(pos_embed, new_size, num_prefix_tokens)``) as the
    publisher's model does."""

    def adapt(state: StateDict, model: nn.Module) -> StateDict:
        target = model.get_submodule(module) if module else model
        full = f"{module}.{key}" if module else key
        if full not in state or state[full].shape == target.pos_embed.shape:
            return state
        prefix = 0 if getattr(target, "no_embed_class", False) else target.num_prefix_tokens
        resampled = resample(state[full], new_size=list(target.patch_embed.grid_size), num_prefix_tokens=prefix)
        log.info("resampled %s from %s to %s", full, tuple(state[full].shape), tuple(resampled.shape))
        return {**state, full: resampled}

    return adapt


def chain(*adapters):
    """Apply adapters in order."""

    def adapt(state: StateDict, model: nn.Module) -> StateDict:
        for a in adapters:
            state = a(state, model)
        return state

    return adapt


_HF_DINOV2_RENAMES = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm(\d)\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc(\d)\.", r"blocks.\1.mlp.fc\2."),
    (r"^layernorm\.", "norm."),
)
_HF_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def hf_dinov2_to_timm(state: StateDict, model: nn.Module) -> StateDict:
    """Hugging Face ``Dinov2Model`` keys (e.g. owkin/phikon-v2's model.safetensors) → timm
    ``VisionTransformer`` keys: q/k/v are concatenated into ``qkv``; the masked-image
    ``mask_token`` (training only) is dropped; unknown keys are kept for the strict load to report."""
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "embeddings.mask_token":
            continue
        m = _HF_QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        new = key
        for pattern, repl in _HF_DINOV2_RENAMES:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[new] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            missing = {"query", "key", "value"} - set(parts)
            raise ValueError(f"layer {block}: checkpoint has no attention {', '.join(sorted(missing))} {kind}")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return fit_pos_embed()(out, model)
