"""Nuclei: a bank of pre-drawn sprites per kind, placed on a hashed jittered grid.

Each grid cell holds at most one nucleus whose position, shape variant and
intensity are hashed from the cell index, so a nucleus cut by a tile edge is
drawn identically from both sides. Sprites are stored sparsely (only the pixels
they cover) and splatted into a block with ``np.bincount``: the cost is the
covered area, with no Python loop over nuclei.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft

from .noise import hash_uniform, sub_key
from .recipe import RECIPES, NucleusKind

BANK_SIZE = 96


@dataclass(frozen=True)
class SpriteBank:
    """``BANK_SIZE`` nuclei of one kind, as flat lists of covered pixels.

    Sprite ``k`` owns entries ``start[k] : start[k] + length[k]`` of ``dy``, ``dx``
    (offsets from the centre pixel), ``density`` (stain amount) and ``alpha`` (coverage).
    For kinds that follow the fibres, sprite ``k`` is oriented at ``π k / BANK_SIZE``.
    """

    kind: NucleusKind
    spacing: float
    reach: int
    dy: np.ndarray
    dx: np.ndarray
    density: np.ndarray
    alpha: np.ndarray
    start: np.ndarray
    length: np.ndarray


def _blur_batch(noise: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-filter each image of a (K, S, S) stack (periodic, via FFT), unit std."""
    s = noise.shape[-1]
    ky, kx = np.fft.fftfreq(s)[:, None], np.fft.rfftfreq(s)[None, :]
    g = np.exp(-2 * (np.pi * sigma) ** 2 * (ky ** 2 + kx ** 2)).astype(np.float32)
    out = scipy.fft.irfft2(scipy.fft.rfft2(noise) * g, s=(s, s))
    return out / out.std(axis=(1, 2), keepdims=True)


def make_bank(kind: NucleusKind, mpp: float, rng: np.random.Generator) -> SpriteBank:
    """Draw ``BANK_SIZE`` nuclei of ``kind`` at ``mpp`` µm/px (vectorized over the bank)."""
    n, f32 = BANK_SIZE, np.float32
    r = kind.radius_um / mpp * np.clip(1 + kind.radius_sd / kind.radius_um * rng.standard_normal(n), 0.6, 1.6)
    e = rng.uniform(*kind.elongation, n)
    a, b = r * np.sqrt(e), r / np.sqrt(e)
    theta = (np.arange(n) + 0.5) / n * np.pi if kind.follows_fibres else rng.uniform(0, np.pi, n)
    # outline: radius × (1 + Σ_m amp_m cos(m ψ + phase_m)), m = 2..5, for irregular shapes
    harmonics = np.arange(2, 6)
    amp = np.clip(rng.standard_normal((n, harmonics.size)), -2, 2) * kind.irregularity / np.sqrt(harmonics - 1)
    rot = (amp * np.exp(1j * rng.uniform(0, 2 * np.pi, amp.shape))).astype(np.complex64)
    reach = int(math.ceil((a * (1 + np.abs(amp).sum(axis=1))).max())) + 2
    off = np.arange(-reach, reach + 1, dtype=f32)
    sub = rng.uniform(-0.5, 0.5, (n, 2)).astype(f32)  # sub-pixel centre so sprites differ at the pixel level
    dx = off[None, None, :] - sub[:, 0, None, None]
    dy = off[None, :, None] - sub[:, 1, None, None]
    c, s = np.cos(theta).astype(f32)[:, None, None], np.sin(theta).astype(f32)[:, None, None]
    u = (dx * c + dy * s) / a.astype(f32)[:, None, None]
    v = (-dx * s + dy * c) / b.astype(f32)[:, None, None]
    rad = np.sqrt(u * u + v * v)
    z = (u + 1j * v) / np.maximum(rad, 1e-6)  # e^{iψ}
    zm, outline = z * z, np.ones_like(rad)
    for m in range(harmonics.size):
        outline += (zm * rot[:, m, None, None]).real
        zm *= z
    rho = rad / outline
    depth = (1 - rho) * b.astype(f32)[:, None, None]  # ≈ pixels inside the outline
    alpha = np.clip(depth + 0.5, 0, 1)
    dens = 1 + kind.chromatin * _blur_batch(rng.standard_normal(alpha.shape, f32), max(0.7, 0.45 / mpp))
    dens *= 1 - kind.vesicular * np.clip(1 - rho * rho, 0, 1)
    dens += kind.rim * np.exp(-np.square(np.maximum(depth, 0) * (mpp / 0.5)))
    spot = rng.uniform(-0.35, 0.35, (n, 2)).astype(f32)
    sx = (spot[:, 0] * a * np.cos(theta) - spot[:, 1] * b * np.sin(theta)).astype(f32)[:, None, None]
    sy = (spot[:, 0] * a * np.sin(theta) + spot[:, 1] * b * np.cos(theta)).astype(f32)[:, None, None]
    nucleolus = (0.9 * (rng.random(n) < kind.nucleolus)).astype(f32)[:, None, None]
    dens += nucleolus * np.exp(-((dx - sx) ** 2 + (dy - sy) ** 2) / f32(2 * max(0.8, 0.4 / mpp) ** 2))
    dens = np.clip(dens, 0.15, None) * alpha
    k, iy, ix = np.nonzero(alpha > 0.01)
    length = np.bincount(k, minlength=n)
    return SpriteBank(kind=kind, spacing=kind.spacing_um / mpp, reach=reach,
                      dy=(iy - reach).astype(np.int64), dx=(ix - reach).astype(np.int64),
                      density=dens[k, iy, ix], alpha=alpha[k, iy, ix],
                      start=np.concatenate([[0], np.cumsum(length)[:-1]]), length=length)


@functools.lru_cache(maxsize=8)
def banks_for(recipe: str, mpp: float) -> tuple[SpriteBank, ...]:
    """Sprite banks of every nucleus kind of a registered recipe at ``mpp`` (deterministic; cached)."""
    rng = np.random.default_rng(7)
    return tuple(make_bank(kind, mpp, rng) for kind in RECIPES[recipe].nuclei)


Gate = Callable[[str, np.ndarray, np.ndarray], np.ndarray]
Angle = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Placed:
    """Nuclei of one kind touching a block: integer centres, sprite index and intensity."""

    bank: SpriteBank
    cx: np.ndarray
    cy: np.ndarray
    variant: np.ndarray
    intensity: np.ndarray


def place(bank: SpriteBank, key: int, x0: int, y0: int, w: int, h: int, gate: Gate, angle: Angle) -> Placed:
    """The nuclei of ``bank``'s kind whose sprite can reach the block (x0, y0, w, h)."""
    c, m = bank.spacing, bank.reach + 1
    ix = np.arange(math.floor((x0 - m) / c), math.floor((x0 + w + m) / c) + 1)[None, :]
    iy = np.arange(math.floor((y0 - m) / c), math.floor((y0 + h + m) / c) + 1)[:, None]
    j = bank.kind.jitter
    cx = np.floor((ix + 0.5 + j * (hash_uniform(ix, iy, sub_key(key, 1)) - 0.5)) * c).astype(np.int64).ravel()
    cy = np.floor((iy + 0.5 + j * (hash_uniform(ix, iy, sub_key(key, 2)) - 0.5)) * c).astype(np.int64).ravel()
    r = bank.reach
    near = np.flatnonzero((cx >= x0 - r) & (cx < x0 + w + r) & (cy >= y0 - r) & (cy < y0 + h + r))
    ix, iy = np.broadcast_arrays(ix, iy)
    ix, iy, cx, cy = ix.ravel()[near], iy.ravel()[near], cx[near], cy[near]
    chance = hash_uniform(ix, iy, sub_key(key, 3))
    keep = chance < bank.kind.density * gate(bank.kind.region, cx, cy)
    ix, iy, cx, cy = ix[keep], iy[keep], cx[keep], cy[keep]
    pick = hash_uniform(ix, iy, sub_key(key, 4))
    # sum of three uniforms: a cheap, bounded stand-in for a normal draw
    z = 2 * (sum(hash_uniform(ix, iy, sub_key(key, 5 + k)) for k in range(3)) - 1.5)
    if bank.kind.follows_fibres:
        turn = angle(cx, cy) / np.pi + (pick - 0.5) * 0.15
        variant = np.floor(turn * BANK_SIZE).astype(np.int64) % BANK_SIZE
    else:
        variant = np.minimum((pick * BANK_SIZE).astype(np.int64), BANK_SIZE - 1)
    return Placed(bank, cx, cy, variant, np.exp(bank.kind.intensity_sd * z).astype(np.float32))


def splat(placed: list[Placed], stains: list[str], x0: int, y0: int, w: int, h: int
          ) -> tuple[list[np.ndarray], np.ndarray]:
    """Sum the nuclei into per-stain concentration maps and a coverage map, each (h, w) float32."""
    idx, dens, alpha = [], [], []
    for p in placed:
        b, lengths = p.bank, p.bank.length[p.variant]
        owner = np.repeat(np.arange(p.cx.size), lengths)
        # ragged arange: entry j of nucleus i's sprite -> start[variant_i] + j
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        entry = np.arange(lengths.sum()) - first[owner] + b.start[p.variant][owner]
        px, py = p.cx[owner] - x0 + b.dx[entry], p.cy[owner] - y0 + b.dy[entry]
        inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        owner, entry = owner[inside], entry[inside]
        idx.append(py[inside] * w + px[inside])
        dens.append(b.density[entry] * p.intensity[owner])
        alpha.append(b.alpha[entry])
    every = np.concatenate(idx) if idx else np.zeros(0, np.intp)

    def canvas(values: list[np.ndarray]) -> np.ndarray:
        weights = np.concatenate(values) if values else np.zeros(0, np.float32)
        return np.bincount(every, weights, minlength=h * w).reshape(h, w).astype(np.float32)

    maps = [canvas([d * np.float32(p.bank.kind.stains.get(s, 0.0)) for d, p in zip(dens, placed, strict=True)])
            for s in stains]
    return maps, canvas(alpha)
