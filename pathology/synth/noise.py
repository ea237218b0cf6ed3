"""Deterministic noise as a function of position: the building blocks of seamless tiles.

Everything here depends only on absolute level-0 coordinates and a key, never on
which tile asks, so any region rendered on its own equals the same region cut
from a whole slide.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.fft

_M1, _M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_PX, _PY = np.uint32(0x9E3779B1), np.uint32(0x85EBCA77)


def _mix(h: np.ndarray) -> np.ndarray:
    """lowbias32 finalizer: a well-scrambled uint32 for each uint32 (in place)."""
    h ^= h >> np.uint32(16)
    h *= _M1
    h ^= h >> np.uint32(15)
    h *= _M2
    h ^= h >> np.uint32(16)
    return h


def hash_uniform(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """Uniform [0, 1) float32 for each integer lattice point (broadcasting ``ix``, ``iy``)."""
    ix = np.asarray(ix).astype(np.int64).astype(np.uint32)
    iy = np.asarray(iy).astype(np.int64).astype(np.uint32)
    h = _mix(ix * _PX + np.uint32(key & 0xFFFFFFFF))
    h = _mix(h ^ (iy * _PY))
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)


def sub_key(key: int, *salt: int) -> int:
    """An independent 32-bit key derived from ``key`` and ``salt`` (one per noise use)."""
    h = key & 0xFFFFFFFF
    for s in salt:
        h ^= (s * 0x85EBCA77) & 0xFFFFFFFF
        h ^= h >> 16
        h = (h * 0x7FEB352D) & 0xFFFFFFFF
        h ^= h >> 15
        h = (h * 0x846CA68B) & 0xFFFFFFFF
        h ^= h >> 16
    return h


def _smooth(f: np.ndarray) -> np.ndarray:
    return f * f * (3 - 2 * f)


def _axis_weights(start: int, n: int, spacing: float) -> tuple[int, np.ndarray, np.ndarray]:
    """First lattice index, per-pixel lattice offset and smoothstep weight along one axis."""
    g = (np.arange(start, start + n, dtype=np.float64) + 0.5) / spacing
    i = np.floor(g)
    lo = int(i[0])
    return lo, (i - lo).astype(np.intp), _smooth((g - i).astype(np.float32))


def value_noise(x0: int, y0: int, w: int, h: int, spacing: float, key: int,
                fn: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Smooth value noise in [0, 1) over a pixel box, (h, w) float32.

    Random values sit on a lattice ``spacing`` pixels apart (mapped through ``fn`` if
    given, e.g. to the cosine of an angle) and are blended with smoothstep weights,
    separably (rows of the lattice first), so the cost is a few operations per pixel.
    """
    lx, ox, fx = _axis_weights(x0, w, spacing)
    ly, oy, fy = _axis_weights(y0, h, spacing)
    lat = hash_uniform(np.arange(lx, lx + ox[-1] + 2)[None, :], np.arange(ly, ly + oy[-1] + 2)[:, None], key)
    lat = fn(lat) if fn is not None else lat
    rows = lat[:, ox] * (1 - fx) + lat[:, ox + 1] * fx
    step = rows[1:] - rows[:-1]
    out = step[oy]
    out *= fy[:, None]
    out += rows[oy]
    return out


def value_noise_at(x: np.ndarray, y: np.ndarray, spacing: float, key: int,
                   fn: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """:func:`value_noise` at arbitrary level-0 pixels ``x``, ``y`` (integers)."""
    gx, gy = (np.asarray(x, np.float64) + 0.5) / spacing, (np.asarray(y, np.float64) + 0.5) / spacing
    ix, iy = np.floor(gx), np.floor(gy)
    fx, fy = _smooth((gx - ix).astype(np.float32)), _smooth((gy - iy).astype(np.float32))
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)

    def lat(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        u = hash_uniform(i, j, key)
        return fn(u) if fn is not None else u

    top = lat(ix, iy) * (1 - fx) + lat(ix + 1, iy) * fx
    bottom = lat(ix, iy + 1) * (1 - fx) + lat(ix + 1, iy + 1) * fx
    return top + (bottom - top) * fy


def _field_coords(coords: np.ndarray, ds: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Left sample index and linear weight of level-0 pixel ``coords`` along one axis of a
    coarse field whose sample ``j`` sits at the centre of level-0 block ``j`` (``ds`` wide);
    beyond the first and last samples the field is held constant."""
    g = (np.asarray(coords, np.float64) + 0.5) / ds - 0.5
    i = np.clip(np.floor(g), 0, max(size - 2, 0)).astype(np.intp)
    f = np.clip(g - i, 0, 1).astype(np.float32) if size > 1 else np.zeros(g.shape, np.float32)
    return i, f


def upsample_field(field: np.ndarray, ds: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Bilinear level-0 values (h, w) float32 of a coarse field sampled every ``ds`` pixels."""
    fh, fw = field.shape
    ix, fx = _field_coords(np.arange(x0, x0 + w), ds, fw)
    iy, fy = _field_coords(np.arange(y0, y0 + h), ds, fh)
    r0, r1 = int(iy[0]), int(min(iy[-1] + 1, fh - 1))
    band = field[r0:r1 + 1]
    rows = band[:, ix] * (1 - fx) + band[:, np.minimum(ix + 1, fw - 1)] * fx
    top, bottom = rows[iy - r0], rows[np.minimum(iy + 1, fh - 1) - r0]
    bottom -= top
    bottom *= fy[:, None]
    bottom += top
    return bottom


def field_at(field: np.ndarray, ds: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear values of a coarse field at level-0 points (same convention as :func:`upsample_field`)."""
    fh, fw = field.shape
    ix, fx = _field_coords(x, ds, fw)
    iy, fy = _field_coords(y, ds, fh)
    ix1, iy1 = np.minimum(ix + 1, fw - 1), np.minimum(iy + 1, fh - 1)
    top = field[iy, ix] * (1 - fx) + field[iy, ix1] * fx
    bottom = field[iy1, ix] * (1 - fx) + field[iy1, ix1] * fx
    return top + (bottom - top) * fy


def filtered_noise(rng: np.random.Generator, shape: tuple[int, int], *sigmas: tuple[float, float],
                   angle: float = 0.0, weights: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """Periodic Gaussian-filtered white noise (float32, zero mean, unit std).

    Each ``sigmas`` entry is a kernel's (along, across) standard deviation in pixels,
    the long axis at ``angle`` radians: (2, 2) gives round blobs, (20, 1.5) fibres;
    several kernels (mixed by ``weights``) filter the same noise. Made in the
    frequency domain, so the result tiles seamlessly with period ``shape``.
    """
    h, w = shape
    ky = (np.fft.fftfreq(h) * 2 * np.pi).astype(np.float32)[:, None]
    kx = (np.fft.rfftfreq(w) * 2 * np.pi).astype(np.float32)[None, :]
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    along2, across2 = np.square(kx * c + ky * s), np.square(ky * c - kx * s)
    gain = sum(np.float32(wt) * np.exp(np.float32(-0.5 * a * a) * along2 + np.float32(-0.5 * b * b) * across2)
               for wt, (a, b) in zip(weights, sigmas, strict=True))
    white = rng.standard_normal((2, h, w // 2 + 1), np.float32)
    out = scipy.fft.irfft2((white[0] + 1j * white[1]) * gain, s=shape)
    out -= out.mean()
    std = out.std()
    return out / std if std > 0 else out


def warp_periodic(texture: np.ndarray, rng: np.random.Generator, sigma: float, amount: float) -> np.ndarray:
    """``texture`` with its domain displaced by smooth periodic noise (straight streaks become wavy)."""
    h, w = texture.shape
    dy = amount * filtered_noise(rng, (h, w), (sigma, sigma))
    dx = amount * filtered_noise(rng, (h, w), (sigma, sigma))
    m = int(np.ceil(max(np.abs(dy).max(), np.abs(dx).max()))) + 2
    padded = np.pad(texture, m, mode="wrap").ravel()  # so no index needs wrapping
    y = np.arange(h, dtype=np.float32)[:, None] + dy
    x = np.arange(w, dtype=np.float32)[None, :] + dx
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    i00 = (y0.astype(np.int32) + m) * (w + 2 * m) + x0.astype(np.int32) + m
    top = padded.take(i00)
    top += (padded.take(i00 + 1) - top) * fx
    i00 += w + 2 * m
    bottom = padded.take(i00)
    bottom += (padded.take(i00 + 1) - bottom) * fx
    return top + (bottom - top) * fy


def _wrapped(a: np.ndarray, start: int, n: int, axis: int) -> np.ndarray:
    """``n`` entries of ``a`` along ``axis`` from ``start``, wrapping around."""
    p, s, pieces = a.shape[axis], start % a.shape[axis], []
    while n > 0:
        take = min(n, p - s)
        pieces.append(a[s:s + take] if axis == 0 else a[:, s:s + take])
        n, s = n - take, 0
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=axis)


def periodic_lookup(texture: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The (h, w) window of an endlessly repeated ``texture`` at level-0 position (x0, y0), a new array."""
    out = _wrapped(_wrapped(texture, y0, h, 0), x0, w, 1)
    return out.copy() if np.may_share_memory(out, texture) else out
