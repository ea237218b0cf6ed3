"""TransMIL (Shao et al. 2021, "Transformer based correlated multiple instance learning"),
written from the paper: the instances, padded to a square and preceded by class tokens,
go through a Nyström-attention transformer layer, the PPEG positional encoding (depthwise
7/5/3 convolutions on the square) and a second transformer layer; the class token feeds
the head.

Multi-task: one class token (and linear head) per task, all in one shared transformer.
The second layer's output is read only at the class tokens, so that layer computes just
their rows of attention, exactly (O(N) instead of the Nyström approximation); these rows,
averaged over attention heads, are the attention maps. The map of a task is its class
token's attention to the instances (an instance padded twice gets both shares),
renormalized to sum to 1 over the instances. Memory is O(N × landmarks): no N × N matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pathology.errors import InputError

from .base import Head, MILModel, MILOutput, register_model


def iterative_pinv(x: Tensor, iterations: int = 6) -> Tensor:
    """Moore-Penrose pseudo-inverse of square matrices (..., m, m) by the iteration of
    Razavi et al. 2014 (as in Nyströmformer): cheap, differentiable, no SVD."""
    absolute = x.abs()
    scale = absolute.sum(dim=-1).amax(dim=-1) * absolute.sum(dim=-2).amax(dim=-1)
    z = x.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def segment_means(t: Tensor, m: int) -> Tensor:
    """Means of ``m`` contiguous, near-equal segments along dim -2 of t (heads, n, d) -> (heads, m, d)."""
    n = t.shape[-2]
    segment = torch.arange(n, device=t.device) * m // n
    sums = t.new_zeros(t.shape[0], m, t.shape[-1]).index_add_(1, segment, t)
    counts = torch.bincount(segment, minlength=m).to(t.dtype)
    return sums / counts[:, None]


def nystrom_attention(q: Tensor, k: Tensor, v: Tensor, landmarks: int, pinv_iterations: int = 6) -> Tensor:
    """softmax(q k^T) v approximated with ``landmarks`` segment-mean landmarks (Xiong et al.
    2021): softmax(q k~^T) pinv(softmax(q~ k~^T)) softmax(q~ k^T) v. q (scaled), k, v: (heads, n, d).
    Exact attention when n <= landmarks."""
    if q.shape[-2] <= landmarks:
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    q_land, k_land = segment_means(q, landmarks), segment_means(k, landmarks)
    kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)       # (heads, n, m)
    kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)  # (heads, m, m)
    kernel_3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1)       # (heads, m, n)
    return kernel_1 @ (iterative_pinv(kernel_2, pinv_iterations) @ (kernel_3 @ v))


class NystromLayer(nn.Module):
    """Pre-norm transformer layer x + attention(norm(x)) with Nyström self-attention and
    the depthwise convolution of the values along the sequence that Nyströmformer adds."""

    def __init__(self, dim: int, heads: int, landmarks: int, dropout: float, residual_kernel: int = 33):
        super().__init__()
        self.heads, self.landmarks, self.scale = heads, landmarks, (dim // heads) ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.residual = nn.Conv2d(heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0),
                                  groups=heads, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        n, dim = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, dim // self.heads).permute(1, 2, 0, 3)
        attended = nystrom_attention(q * self.scale, k, v, self.landmarks)
        attended = attended + self.residual(v[None])[0]
        return x + self.out(attended.transpose(0, 1).reshape(n, dim))


class ClassTokenLayer(nn.Module):
    """Pre-norm transformer layer evaluated only at the first ``t`` tokens (the class
    tokens), with exact softmax attention over all tokens; also returns those attention
    rows averaged over heads."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        n, dim = x.shape
        d = dim // self.heads
        normed = self.norm(x)
        q = self.q(normed[:t]).reshape(t, self.heads, d).transpose(0, 1)          # (heads, t, d)
        k, v = self.kv(normed).reshape(n, 2, self.heads, d).permute(1, 2, 0, 3)   # (heads, n, d) each
        weights = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)               # (heads, t, n)
        out = self.out((weights @ v).transpose(0, 1).reshape(t, dim))
        return x[:t] + out, weights.mean(dim=0)


class PPEG(nn.Module):
    """Pyramid position encoding generator: x + depthwise conv 7, 5 and 3 on the square grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, size, padding=size // 2, groups=dim) for size in (7, 5, 3))

    def forward(self, x: Tensor, side: int) -> Tensor:
        grid = x.T.reshape(1, x.shape[1], side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return grid.reshape(x.shape[1], side * side).T


@register_model("transmil")
class TransMIL(MILModel):
    """TransMIL with one class token and head per task."""

    def __init__(self, in_dim: int, heads: Sequence[Head], *, hidden: int = 256, dropout: float = 0.25,
                 attention_heads: int = 8, landmarks: int | None = None):
        super().__init__(in_dim, heads, hidden=hidden, dropout=dropout)
        if hidden % attention_heads:
            raise InputError(f"TransMIL needs hidden ({hidden}) divisible by attention_heads ({attention_heads})")
        landmarks = landmarks or max(hidden // 2, 1)
        self.class_tokens = nn.Parameter(torch.randn(len(self.heads), hidden) * 0.02)
        self.layer_1 = NystromLayer(hidden, attention_heads, landmarks, dropout)
        self.ppeg = PPEG(hidden)
        self.layer_2 = ClassTokenLayer(hidden, attention_heads, dropout)
        self.norm = nn.LayerNorm(hidden)
        self.classifiers = nn.ModuleList(nn.Linear(hidden, head.n_outputs) for head in self.heads)

    def aggregate(self, h: Tensor, labels: dict[str, Tensor] | None) -> MILOutput:
        n, t = len(h), len(self.heads)
        side = math.ceil(math.sqrt(n))
        pad = side * side - n  # <= n (0 for n = 1), so the first instances can fill the square
        tokens = torch.cat([self.class_tokens, h, h[:pad]])
        tokens = self.layer_1(tokens)
        tokens = torch.cat([tokens[:t], self.ppeg(tokens[t:], side)])
        cls, weights = self.layer_2(tokens, t)
        cls = self.norm(cls)
        instance_weights = weights[:, t:t + n].index_add(1, torch.arange(pad, device=h.device), weights[:, t + n:])
        instance_weights = instance_weights / instance_weights.sum(dim=1, keepdim=True)
        logits = {head.name: classifier(cls[i])
                  for i, (head, classifier) in enumerate(zip(self.heads, self.classifiers))}
        attention = {head.name: instance_weights[i] for i, head in enumerate(self.heads)}
        return MILOutput(logits, attention, h.new_zeros(()))
