"""``StainTextureEncoder``: fixed stain and texture statistics of a patch, no weights.

What a pathologist reads off a patch at low power, measured directly: how much
hematoxylin, eosin and DAB it holds (colour deconvolution), how much of it is white
space, how many nucleus-sized dark blobs it has and at what size (a difference-of-
Gaussians pyramid and its local maxima), how fine its texture is, and how aligned its
fibres are (structure-tensor coherence). Every parameter is fixed, so the encoder needs
no download and no training and runs fast on a CPU: the demo's and the tests' encoder.

Pipeline for RGB in [0, 1] (square, side >= 64):

1. 2x2 binning (what a scan at twice the pixel size records), optical density
   ``-ln(max(rgb, 1/255))``, deconvolved with the fixed H-E-DAB matrix of Ruifrok &
   Johnston (scikit-image's ``rgb2hed``); the mean OD of the three channels is a fourth map;
2. a Gaussian pyramid of the H, E and DAB maps (5-tap binomial, replicate borders): each
   level minus its blur is an octave band-pass (difference-of-Gaussians) image, at sigma
   ~1-2, 2-4.5, 4.5-9 and 9-18 full-resolution pixels; at 0.5 µm/px these respond to
   edges and chromatin, small nuclei (lymphocytes), tumour nuclei, and cell clusters;
3. global pooling: means, spreads, quantiles and area fractions above fixed OD levels
   (from an exact per-patch histogram); per band the mean absolute and RMS response and
   the area above a nucleus-like contrast; densities of hematoxylin blobs (local maxima of
   the bands); gradient energy and local and global orientation coherence of H and E.

Magnitudes go through ``log1p(m / floor)`` with fixed floors (roughly the noise level of
an 8-bit H&E scan), so features are about unit-scale, never NaN/inf, and ratios between
magnitudes are differences a linear model can use; fractions, quantiles and coherences
are used as they are (all within [-0.5, 3.5]).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

# Ruifrok & Johnston stain OD vectors (rows: hematoxylin, eosin, DAB), as in skimage.color.
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
MIN_INTENSITY = 1.0 / 255.0           # 8-bit black: OD is at most ln(255) = 5.5
MAPS = ("h", "e", "d", "od")          # deconvolved stains + mean optical density
STAINS = MAPS[:3]                     # the maps the pyramid filters
BANDS = ("b1", "b2", "b4", "b9")      # octave bands, named by inner sigma in full-res pixels
# Per-patch histogram of each map: bins of 1/64 OD from -0.5 (exact integer counts).
HIST_START, HIST_STEP, HIST_BINS = -0.5, 1 / 64, 256
QUANTILES = (0.1, 0.5, 0.9)
# Area fractions above these OD levels (multiples of HIST_STEP): white space vs tissue,
# nuclear vs cytoplasmic hematoxylin, stroma eosin, DAB.
LEVELS = {
    "h": (0.1, 0.2, 0.35, 0.5, 0.7, 1.0),
    "e": (0.05, 0.1, 0.2, 0.3, 0.45, 0.6),
    "d": (0.05, 0.15, 0.3),
    "od": (0.05, 0.1, 0.2, 0.35, 0.5, 0.8),
}
BAND_CONTRAST = {"h": (0.05, 0.15), "e": (0.05, 0.15), "d": (0.03, 0.1)}   # "blob" thresholds
PEAK_CONTRAST = (0.05, 0.15)          # hematoxylin contrast of a nucleus-like local maximum
PEAK_BANDS = (1, 2, 3)                # bands searched for blobs (b2, b4, b9)
ORIENTED = ("h", "e")                 # maps whose gradient structure is measured
COHERENCE_WINDOW = 4                  # structure-tensor window, in quarter-res pixels
FLOOR_OD = 0.02                       # log1p floors: OD magnitudes,
FLOOR_INTENSITY = 0.005               # full-res intensity steps,
FLOOR_PEAKS = 0.1                     # blobs per 1000 full-res pixels
EPS = 1e-6


def _feature_names() -> tuple[str, ...]:
    names = [f"mean_{m}" for m in MAPS] + [f"std_{m}" for m in MAPS]
    names += ["fine_g", "od_r", "od_g", "od_b", "chroma_r", "chroma_g", "chroma_b", "share_h", "share_d"]
    names += [f"q{round(q * 100)}_{m}" for m in MAPS for q in QUANTILES]
    names += [f"area_{m}>{t}" for m in MAPS for t in LEVELS[m]]
    for band in BANDS:
        for s in STAINS:
            names += [f"{band}_{s}_l1", f"{band}_{s}_rms", f"{band}_{s}_lo", f"{band}_{s}_hi"]
    names += [f"blobs_{BANDS[b]}_{t}" for b in PEAK_BANDS for t in ("lo", "hi")]
    names += [f"{s}_{m}" for m in ORIENTED for s in ("grad", "coh_local", "coh_global")]
    return tuple(names)


def _bin2(x: Tensor) -> Tensor:
    """Mean of each 2x2 block (= avg_pool2d(x, 2), several times faster on a CPU)."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    rows = x[..., : 2 * h, : 2 * w].unflatten(-2, (h, 2))
    pairs = (rows[..., 0, :] + rows[..., 1, :]).unflatten(-1, (w, 2))
    return (pairs[..., 0] + pairs[..., 1]).mul_(0.25)


def _binomial(x: Tensor, dim: int) -> Tensor:
    """[1 4 6 4 1] / 16 along ``dim`` (-1 or -2) with replicate borders."""
    p = F.pad(x, (2, 2, 0, 0) if dim == -1 else (0, 0, 2, 2), mode="replicate")
    n = x.shape[dim]
    tap = [p.narrow(dim, i, n) for i in range(5)]
    out = tap[0] + tap[4]
    out.add_(tap[1], alpha=4).add_(tap[3], alpha=4).add_(tap[2], alpha=6)
    return out.mul_(1 / 16)


def _blur(x: Tensor) -> Tensor:
    """Separable binomial blur (sigma 1 px) of every channel."""
    return _binomial(_binomial(x, -1), -2)


def _max3(x: Tensor) -> Tensor:
    """3x3 maximum filter with replicate borders (max_pool2d is slow on a CPU)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _share_above(x: Tensor, threshold: Tensor) -> Tensor:
    """Fraction of pixels of each (B, C) image above its channel's ``threshold`` (C,)."""
    above = x.flatten(2) > threshold.view(1, -1, 1)
    return above.sum(2, dtype=torch.int32).float() / above.shape[2]


def _rms(x: Tensor) -> Tensor:
    """Root mean square of each (B, C) image."""
    flat = x.flatten(2)
    return torch.linalg.vector_norm(flat, dim=2) / flat.shape[2] ** 0.5


def _log_scale(m: Tensor, floor: float) -> Tensor:
    return torch.log1p(m.clamp_min(0) / floor)


class StainTextureEncoder(nn.Module):
    """Fixed H/E/DAB stain, white-space, nucleus-blob and fibre-texture statistics of a patch.

    No learned parameters: the stain matrix and every threshold are buffers, so
    ``state_dict()`` fingerprints the encoder. Input (B, 3, H, W) float RGB in [0, 1],
    H = W >= 64; output (B, ``dim``) float32, each row a function of its own patch only
    (bit-identical whatever the batch). ``feature_names`` says what each column measures.
    """

    feature_names: ClassVar[tuple[str, ...]] = _feature_names()
    dim: ClassVar[int] = len(feature_names)
    min_size: ClassVar[int] = 64

    def __init__(self) -> None:
        super().__init__()
        hed_from_rgb = torch.linalg.inv(torch.tensor(RGB_FROM_HED, dtype=torch.float64))
        # rows map OD (r, g, b) to H, E, DAB and the mean OD
        projection = torch.cat([hed_from_rgb.T, torch.full((1, 3), 1 / 3, dtype=torch.float64)])
        self.register_buffer("projection", projection.to(torch.float32))
        edges = [[round((t - HIST_START) / HIST_STEP) for t in LEVELS[m]] for m in MAPS]
        self.register_buffer("level_bins", torch.tensor([e for row in edges for e in row]))
        self.register_buffer("quantiles", torch.tensor(QUANTILES))
        self.register_buffer("band_contrast", torch.tensor([BAND_CONTRAST[s] for s in STAINS]).T.contiguous())
        self.register_buffer("peak_contrast", torch.tensor(PEAK_CONTRAST))
        self.register_buffer("floors", torch.tensor([FLOOR_OD, FLOOR_INTENSITY, FLOOR_PEAKS]))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"StainTextureEncoder needs (B, 3, H, W) RGB, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise InputError(f"StainTextureEncoder needs patches of at least {self.min_size} px, "
                             f"got {tuple(x.shape[-2:])}")
        x = x.float()
        od = _bin2(x).clamp_(MIN_INTENSITY, 1.0).log_().neg_()
        b, _, h, w = od.shape
        maps = (self.projection @ od.flatten(2)).view(b, len(MAPS), h, w)
        bands, quarter = self._pyramid(maps[:, :3])
        return torch.cat([self._colour(x, od, maps), self._distribution(maps), self._band_stats(bands),
                          self._blobs(bands), self._orientation(quarter)], dim=1)

    # -- feature groups -----------------------------------------------------------------
    def _colour(self, x: Tensor, od: Tensor, maps: Tensor) -> Tensor:
        """Mean and spread of each map, full-res detail, mean OD per channel and its hue."""
        f_od, f_int = float(self.floors[0]), float(self.floors[1])
        mean = maps.mean((2, 3))
        std = (_rms(maps).square() - mean.square()).clamp_min(0).sqrt()
        green = x[:, 1:2, ::2]        # RMS step between horizontal neighbours, every other row
        fine = _rms(green[..., 1:] - green[..., :-1])
        od_rgb = od.mean((2, 3))
        chroma = od_rgb / (od_rgb.sum(1, keepdim=True) + EPS)
        stain = mean[:, :3].clamp_min(0)
        share = stain / (stain.sum(1, keepdim=True) + EPS)
        return torch.cat([_log_scale(mean, f_od), _log_scale(std, f_od), _log_scale(fine, f_int),
                          _log_scale(od_rgb, f_od), chroma, share[:, [0, 2]]], dim=1)

    def _distribution(self, maps: Tensor) -> Tensor:
        """Quantiles and area fractions above fixed levels, from each map's exact histogram."""
        b, c = maps.shape[:2]
        q = (maps - HIST_START).mul_(1 / HIST_STEP).clamp_(0, HIST_BINS - 1).to(torch.int32)
        q += (torch.arange(b * c, dtype=torch.int32) * HIST_BINS).view(b, c, 1, 1)
        counts = torch.bincount(q.flatten(), minlength=b * c * HIST_BINS).view(b, c, HIST_BINS)
        cdf = counts.cumsum(2).double() / (maps.shape[2] * maps.shape[3])
        # quantile: first bin whose cdf reaches q, linearly interpolated inside that bin
        target = self.quantiles.double().expand(b, c, -1).contiguous()
        k = torch.searchsorted(cdf, target).clamp_(max=HIST_BINS - 1)
        below = torch.where(k > 0, cdf.gather(2, (k - 1).clamp_min(0)), 0.0)
        inside = (cdf.gather(2, k) - below).clamp_min(EPS)
        quantiles = HIST_START + HIST_STEP * (k + ((target - below) / inside).clamp(0, 1))
        areas, start = [], 0
        for i, m in enumerate(MAPS):
            edges = self.level_bins[start:start + len(LEVELS[m])]
            start += len(edges)
            areas.append(1 - torch.where(edges > 0, cdf[:, i].index_select(1, (edges - 1).clamp_min(0)), 0.0))
        return torch.cat([quantiles.flatten(1), *areas], dim=1).float()

    @staticmethod
    def _pyramid(level: Tensor) -> tuple[list[Tensor], Tensor]:
        """Band-pass images (level minus its blur) at four octaves, and the quarter-res level."""
        bands, quarter = [], level
        for i in range(len(BANDS)):
            blurred = _blur(level)
            bands.append(level - blurred)
            level = blurred[..., ::2, ::2]
            if i == 0:
                quarter = level
        return bands, quarter

    def _band_stats(self, bands: list[Tensor]) -> Tensor:
        """Per band and stain: mean |response|, RMS, and area above a low and a high contrast."""
        f_od = float(self.floors[0])
        out = []
        for band in bands:
            stats = [_log_scale(band.abs().mean((2, 3)), f_od), _log_scale(_rms(band), f_od),
                     _share_above(band, self.band_contrast[0]), _share_above(band, self.band_contrast[1])]
            out.append(torch.stack(stats, dim=2).flatten(1))
        return torch.cat(out, dim=1)

    def _blobs(self, bands: list[Tensor]) -> Tensor:
        """Hematoxylin blobs (3x3 local maxima above a contrast) per 1000 full-res pixels."""
        out = []
        for i in PEAK_BANDS:
            h = bands[i][:, :1]
            is_max = h == _max3(h)
            per_kpx = 1000 / (h.shape[-2] * h.shape[-1] * 4 ** (i + 1))
            out.extend((is_max & (h > t)).flatten(1).sum(1, dtype=torch.int32).float() * per_kpx
                       for t in self.peak_contrast)
        return _log_scale(torch.stack(out, dim=1), float(self.floors[2]))

    def _orientation(self, quarter: Tensor) -> Tensor:
        """Gradient energy and orientation coherence (0 isotropic, 1 all parallel) of H and E."""
        s = quarter[:, [STAINS.index(m) for m in ORIENTED]]
        gx = (s[..., 1:-1, 2:] - s[..., 1:-1, :-2]) * 0.5
        gy = (s[..., 2:, 1:-1] - s[..., :-2, 1:-1]) * 0.5
        n = s.shape[1]
        tensor = torch.cat([gx * gx, gy * gy, gx * gy], dim=1)      # structure tensor entries

        def anisotropy(t: Tensor) -> tuple[Tensor, Tensor]:
            jxx, jyy, jxy = t[:, :n], t[:, n:2 * n], t[:, 2 * n:]
            return ((jxx - jyy).square() + 4 * jxy.square()).sqrt(), jxx + jyy

        aniso, trace = anisotropy(F.avg_pool2d(tensor, COHERENCE_WINDOW, ceil_mode=True))
        coh_local = aniso.sum((2, 3)) / (trace.sum((2, 3)) + EPS)
        aniso_all, trace_all = anisotropy(tensor.mean((2, 3)))
        coh_global = aniso_all / (trace_all + EPS)
        grad = _log_scale(trace_all.sqrt(), float(self.floors[0]))
        return torch.stack([grad, coh_local, coh_global], dim=2).flatten(1)
