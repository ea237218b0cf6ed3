"""Nuclei by class as transparent overlay tiles on the slide's own DeepZoom grid.

``pathology ihc`` writes every counted nucleus to ``cells/<slide_id>.csv`` (level-0 centre,
class 0-3, own DAB, area); a whole slide has millions. The viewer reads the file once into
numpy arrays sorted by :data:`BUCKET`-pixel squares, row by row, so the nuclei under any tile
are one contiguous run of the arrays per bucket row, with each bucket's class counts and
nuclear area summed (tiles of a bucket or more per pixel add those up instead of visiting
millions of nuclei), and draws each tile when it is asked for, in the class colours of the IHC
QC picture:

- zoomed in, while the typical nucleus is at least a pixel across, every nucleus at its own
  size: as discs while the typical nucleus is small on screen, as rings just outside each
  nucleus once its radius reaches :data:`RING_FROM` px (so the stain underneath stays
  visible, as on the QC picture); higher classes are drawn over lower ones, and no disc is
  less than 1 px in radius;
- zoomed out, where nuclei are smaller than a pixel and would be dots on dots, each pixel
  shows the nuclei inside it: their class colours averaged by count, opaque in proportion to
  the share of the pixel their area covers (solid from :data:`SOLID_COVER`, and never fainter
  than :data:`MIN_ALPHA` where there is a nucleus at all).
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..ihc.report.qc import CLASS_COLOURS
from .deepzoom import TileRegion

COLUMNS = ("x", "y", "class", "area_um2")    # what the overlay reads of the cells table
BUCKET = 512          # level-0 px: a finest-level tile (254 px) touches at most 2 x 2 buckets
DOTS_FROM = 0.5       # typical nucleus radius (tile px) from which nuclei are drawn one by one
MIN_RADIUS = 1.0      # tile px: the smallest disc drawn (a plus of 5 px)
RING_FROM = 4.0       # tile px: nuclei this large are drawn as rings just outside them
RING_WIDTH = 2.0      # tile px
SOLID_COVER = 0.25    # share of a pixel covered by nuclei that draws it opaque (dense tumour)
MIN_ALPHA = 96        # of 255: the faintest pixel holding a nucleus
RGBA = np.hstack([CLASS_COLOURS, np.full((len(CLASS_COLOURS), 1), 255, np.uint8)])


class CellsError(InputError):
    """A cells table the overlay cannot read: the message names the file and the problem."""


@dataclass(frozen=True)
class Nuclei:
    """The nuclei of one slide, sorted by bucket (row-major) for lookups by area."""

    x: np.ndarray            # float32 (N,) level-0 centre
    y: np.ndarray
    classes: np.ndarray      # int8 (N,) 0 negative, 1 = 1+, 2 = 2+, 3 = 3+
    radius: np.ndarray       # float32 (N,) level-0 px, of a disc of the nucleus's area
    offsets: np.ndarray      # int64 (rows * columns + 1,): bucket b holds [offsets[b], offsets[b + 1])
    columns: int             # buckets per row
    typical_radius: float    # median radius, level-0 px
    bucket_counts: np.ndarray  # int32 (rows, columns, classes): nuclei of each class per bucket
    bucket_cover: np.ndarray   # float64 (rows, columns): their summed area, level-0 px²

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.x, self.y, self.classes, self.radius, self.offsets, self.bucket_counts,
                                      self.bucket_cover))

    def __len__(self) -> int:
        return len(self.x)

    def within(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Indices of the nuclei whose centre lies in ``[x0, x1) x [y0, y1)`` (level-0 px)."""
        rows = (len(self.offsets) - 1) // self.columns
        c0, c1 = (int(np.clip(v // BUCKET, 0, self.columns - 1)) for v in (x0, x1))
        r0, r1 = (int(np.clip(v // BUCKET, 0, rows - 1)) for v in (y0, y1))
        first = np.arange(r0, r1 + 1) * self.columns
        starts, ends = self.offsets[first + c0], self.offsets[first + c1 + 1]
        lengths = ends - starts
        idx = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        x, y = self.x[idx], self.y[idx]
        return idx[(x >= x0) & (x < x1) & (y >= y0) & (y < y1)]


def index_nuclei(x: np.ndarray, y: np.ndarray, classes: np.ndarray, radius: np.ndarray,
                 dimensions: tuple[int, int]) -> Nuclei:
    """The nuclei sorted into buckets over a slide of level-0 ``dimensions`` (nuclei past its
    edge go into the edge buckets: lookups still find them)."""
    columns, rows = (max(1, math.ceil(v / BUCKET)) for v in dimensions)
    bx = np.clip(np.floor_divide(x, BUCKET), 0, columns - 1).astype(np.int64)
    by = np.clip(np.floor_divide(y, BUCKET), 0, rows - 1).astype(np.int64)
    key = by * columns + bx
    order = np.argsort(key, kind="stable")
    offsets = np.searchsorted(key[order], np.arange(rows * columns + 1)).astype(np.int64)
    k = len(CLASS_COLOURS)
    counts = np.bincount(key * k + classes, minlength=rows * columns * k).reshape(rows, columns, k)
    cover = np.bincount(key, weights=np.pi * np.asarray(radius, np.float64) ** 2, minlength=rows * columns)
    return Nuclei(np.ascontiguousarray(x[order], np.float32), np.ascontiguousarray(y[order], np.float32),
                  np.ascontiguousarray(classes[order], np.int8), np.ascontiguousarray(radius[order], np.float32),
                  offsets, columns, float(np.median(radius)) if len(radius) else 0.0,
                  counts.astype(np.int32), cover.reshape(rows, columns))


def read_nuclei(path: Path, mpp: float, dimensions: tuple[int, int]) -> Nuclei:
    """The nuclei of a cells table of ``pathology ihc`` (``x, y, class, area_um2`` used) on a slide
    of ``mpp`` µm/px; :class:`CellsError` naming the file and row for a table it cannot use."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = [name.strip() for name in fh.readline().strip().split(",")]
    except (OSError, UnicodeDecodeError) as exc:
        raise CellsError(f"{path}: cannot read the cells table ({exc})") from None
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise CellsError(f"{path}: no {', '.join(missing)} column (the cells table of `pathology ihc` has "
                         "x, y, class, dab_od, area_um2)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # a table of no nuclei: "input contained no data"
        try:
            table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=[header.index(n) for n in COLUMNS],
                               dtype=np.float64, ndmin=2, encoding="utf-8")
        except ValueError as exc:
            raise CellsError(f"{path}: {exc}") from None
    x, y, classes, area = table.T if len(table) else np.zeros((4, 0))
    bad = ~(np.isfinite(x) & np.isfinite(y) & np.isin(classes, np.arange(len(CLASS_COLOURS)))
            & np.isfinite(area) & (area >= 0))
    if bad.any():
        row = int(np.argmax(bad))
        raise CellsError(f"{path}, line {row + 2}: a nucleus needs finite x, y, a class 0-3 and an area >= 0, "
                         f"got {x[row]:g}, {y[row]:g}, {classes[row]:g}, {area[row]:g}")
    return index_nuclei(x, y, classes.astype(np.int8), np.sqrt(area / math.pi) / mpp, dimensions)


def render_tile(nuclei: Nuclei, region: TileRegion) -> np.ndarray:
    """The RGBA pixels of the overlay tile at ``region`` (see the module doc)."""
    w, h = region.size
    if nuclei.typical_radius / region.downsample >= DOTS_FROM:
        return _discs(nuclei, region, w, h)
    return _mix(nuclei, region, w, h)


def tile_png(nuclei: Nuclei, region: TileRegion) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(render_tile(nuclei, region), "RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _discs(nuclei: Nuclei, region: TileRegion, w: int, h: int) -> np.ndarray:
    d, x0, y0 = region.downsample, region.x0, region.y0
    reach = (float(nuclei.radius.max()) / d + RING_WIDTH + 1) * d       # a nucleus centred off the tile still shows
    idx = nuclei.within(x0 - reach, y0 - reach, x0 + w * d + reach, y0 + h * d + reach)
    cx = np.floor((nuclei.x[idx] - x0) / d).astype(np.int64)
    cy = np.floor((nuclei.y[idx] - y0) / d).astype(np.int64)
    halves = np.rint(2 * np.maximum(nuclei.radius[idx] / d, MIN_RADIUS)).astype(np.int64)   # radius in half px
    classes = nuclei.classes[idx].astype(np.int64)
    rings = nuclei.typical_radius / d >= RING_FROM       # one style per level: neighbours look alike
    rgba = np.zeros((h, w, 4), np.uint8)
    order = np.lexsort((halves, classes))             # by class, so 3+ is drawn last, on top
    key = classes[order] * (1 << 32) + halves[order]
    for group in np.split(order, np.flatnonzero(np.diff(key)) + 1):
        if not len(group):
            continue
        dy, dx = _stamp(int(halves[group[0]]), rings)
        ys, xs = cy[group, None] + dy, cx[group, None] + dx
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        rgba[ys[inside], xs[inside]] = RGBA[classes[group[0]]]
    return rgba


@functools.lru_cache(maxsize=1024)
def _stamp(halves: int, ring: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets around the centre pixel of a nucleus of ``halves / 2`` px radius: a disc, or
    a ring just outside it. Read-only arrays (shared by every caller). Radii are compared with a
    quarter pixel added, which no distance between pixel centres equals: no lone pixel sticks out
    of a disc, or into a ring, where the circle passes exactly through a pixel centre."""
    radius = halves / 2 + 0.25
    reach = math.ceil(radius + RING_WIDTH)
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    distance = np.hypot(dx, dy)
    keep = (distance > radius) & (distance <= radius + RING_WIDTH) if ring else distance <= radius
    dy, dx = dy[keep], dx[keep]
    dy.flags.writeable = dx.flags.writeable = False
    return dy, dx


def _mix(nuclei: Nuclei, region: TileRegion, w: int, h: int) -> np.ndarray:
    d, x0, y0 = region.downsample, region.x0, region.y0
    k = len(CLASS_COLOURS)
    if d % BUCKET == 0 and x0 % BUCKET == 0 and y0 % BUCKET == 0:     # whole buckets per pixel: add them up
        f, bx, by = int(d // BUCKET), int(x0 // BUCKET), int(y0 // BUCKET)
        counts = np.zeros((h * f, w * f, k))
        cover = np.zeros((h * f, w * f))
        part = nuclei.bucket_counts[by:by + h * f, bx:bx + w * f]
        counts[:part.shape[0], :part.shape[1]] = part
        cover[:part.shape[0], :part.shape[1]] = nuclei.bucket_cover[by:by + h * f, bx:bx + w * f]
        counts = counts.reshape(h, f, w, f, k).sum(axis=(1, 3))
        cover = cover.reshape(h, f, w, f).sum(axis=(1, 3)) / (d * d)
    else:
        idx = nuclei.within(x0, y0, x0 + w * d, y0 + h * d)
        px = np.minimum(((nuclei.x[idx] - x0) / d).astype(np.int64), w - 1)
        py = np.minimum(((nuclei.y[idx] - y0) / d).astype(np.int64), h - 1)
        flat = py * w + px
        counts = np.bincount(flat * k + nuclei.classes[idx], minlength=w * h * k).reshape(h, w, k).astype(np.float64)
        cover = np.bincount(flat, weights=np.pi * nuclei.radius[idx].astype(np.float64) ** 2,
                            minlength=w * h).reshape(h, w) / (d * d)
    total = counts.sum(axis=2)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = np.rint(counts @ CLASS_COLOURS.astype(np.float64) / np.maximum(total, 1)[..., None])
    alpha = np.clip(cover / SOLID_COVER * 255, MIN_ALPHA, 255)
    rgba[..., 3] = np.where(total > 0, np.rint(alpha), 0)
    return rgba
