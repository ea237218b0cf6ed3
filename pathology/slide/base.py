"""The one slide protocol every backend implements, and the errors it raises."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

# Reads an in-bounds box of a level: (level, x, y, w, h) in level pixels → RGB uint8 (h, w, 3).
RegionReader = Callable[[int, int, int, int, int], np.ndarray]

# Plausible microscope resolutions. TIFF writers often store 72 or 96 dpi by
# default (352.8 or 264.6 µm/px): such a value says nothing about the slide.
MPP_PLAUSIBLE = (0.02, 50.0)


class SlideError(UserError):
    """A slide that cannot be opened or read; ``str()`` is one line naming the file."""

    def __init__(self, path: str | Path, message: str):
        self.path = str(path)
        self.message = " ".join(str(message).split())
        super().__init__(f"{self.path}: {self.message}")


@dataclass(frozen=True)
class Mpp:
    """Level-0 resolution in µm per pixel along x and y, and where it came from."""

    x: float
    y: float
    source: str

    @property
    def is_square(self) -> bool:
        return math.isclose(self.x, self.y, rel_tol=1e-3)


def resolve_mpp(path: str | Path, found: tuple[float, float] | None, source: str,
                override: float | tuple[float, float] | None) -> tuple[Mpp | None, str]:
    """Pick the µm/px: the user's ``--mpp`` first, then plausible metadata.

    Returns the resolution, or ``None`` and the reason (a hint on how to fix it):
    a slide without µm/px still opens, but cannot be tiled (never a silent guess).
    """
    if override is not None:
        ox, oy = (override, override) if np.isscalar(override) else override
        if not (ox > 0 and oy > 0):
            raise SlideError(path, f"--mpp must be positive, got {override}")
        return Mpp(float(ox), float(oy), "override"), ""
    hint = "pass --mpp with the scan resolution, e.g. --mpp 0.25 for 40x or --mpp 0.5 for 20x"
    if found is None:
        return None, f"no µm/px in the slide's metadata; {hint}"
    fx, fy = found
    lo, hi = MPP_PLAUSIBLE
    if all(lo <= v <= hi for v in (fx, fy)):
        return Mpp(float(fx), float(fy), source), ""
    return None, (f"metadata gives {fx:.4g} µm/px ({source}), not a microscope resolution "
                  f"(a writer's default dpi); {hint}")


class Slide:
    """A multi-resolution slide. Backends fill the attributes and implement ``_read``.

    Coordinates given to :meth:`read_region` are level-0 pixels (as in OpenSlide);
    pixels outside the slide come back white, as glass would.
    """

    backend: str = "?"

    def __init__(self, path: str | Path, level_dimensions: list[tuple[int, int]],
                 mpp: tuple[Mpp | None, str]):
        self.path = Path(path)
        self.level_dimensions = [(int(w), int(h)) for w, h in level_dimensions]
        self.mpp, self.mpp_problem = mpp
        w0, h0 = self.level_dimensions[0]
        if w0 <= 0 or h0 <= 0:
            raise SlideError(path, f"level 0 is empty ({w0}x{h0})")

    # -- geometry -----------------------------------------------------------
    def require_mpp(self) -> Mpp:
        """The level-0 µm/px, or a one-line :class:`SlideError` saying how to supply it."""
        if self.mpp is None:
            raise SlideError(self.path, self.mpp_problem)
        return self.mpp

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_downsample_xy(self, level: int) -> tuple[float, float]:
        """Exact per-axis downsample of a level (pyramids are rarely exact powers of 2)."""
        (w0, h0), (w, h) = self.level_dimensions[0], self.level_dimensions[level]
        return w0 / w, h0 / h

    @property
    def level_downsamples(self) -> list[float]:
        return [float(np.mean(self.level_downsample_xy(i))) for i in range(self.level_count)]

    # -- pixels -------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of ``size`` level pixels whose top-left is level-0 ``location``."""
        dx, dy = self.level_downsample_xy(level)
        return self.read_level_region(level, int(math.floor(location[0] / dx)),
                                      int(math.floor(location[1] / dy)), int(size[0]), int(size[1]))

    def read_level_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Like :meth:`read_region` but with the top-left in ``level`` pixels; any part
        outside the level is filled white."""
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x0 == x and y0 == y and x1 == x + w and y1 == y + h:
            return self._read_checked(x, y, level, w, h)
        out = np.full((h, w, 3), 255, np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._read_checked(x0, y0, level, x1 - x0, y1 - y0)
        return out

    def _read_checked(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        try:
            return self._read(x, y, level, w, h)
        except SlideError:
            raise
        except Exception as exc:  # decoder errors come in many types, all mean "unreadable"
            raise SlideError(self.path, f"cannot read pixels at level {level} ({x},{y} {w}x{h}): "
                                        f"{type(exc).__name__}: {exc}") from exc

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """Read an in-bounds box given in *level* pixel coordinates."""
        raise NotImplementedError

    def thumbnail(self, max_size: int) -> np.ndarray:
        """Whole slide, RGB, longest side at most ``max_size`` pixels."""
        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_size
        return self.read_scaled(max(scale, 1.0))

    def read_scaled(self, downsample: float, strip: int = 1024, pool: Executor | None = None,
                    reader: RegionReader | None = None) -> np.ndarray:
        """Whole slide at ``downsample`` × level 0, assembled strip by strip from the
        best pyramid level so a large level is never held in memory.

        Strips are independent: with a thread ``pool`` they are read and shrunk in parallel
        (decoders and Pillow's resampling release the GIL). ``reader(level, x, y, w, h)``
        replaces this slide's own reads of in-bounds level boxes, e.g. by a faster decoder of
        the same pixels; the strips, and so the result, stay the same.
        """
        from PIL import Image

        w0, h0 = self.dimensions
        out_w, out_h = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        level = self.best_level_for(downsample)
        lw, lh = self.level_dimensions[level]
        sy = lh / out_h  # level rows per output row
        rows = max(1, int(strip / sy))
        out = np.empty((out_h, out_w, 3), np.uint8)
        read = reader or (lambda lv, x, y, w, h: self._read_checked(x, y, lv, w, h))

        def one(oy: int) -> None:
            oy1 = min(out_h, oy + rows)
            ly0, ly1 = int(math.floor(oy * sy)), min(lh, int(math.ceil(oy1 * sy)))
            band = read(level, 0, ly0, lw, max(1, ly1 - ly0))
            img = Image.fromarray(band).resize((out_w, oy1 - oy), Image.Resampling.BOX,
                                               box=(0, oy * sy - ly0, lw, oy1 * sy - ly0))
            out[oy:oy1] = np.asarray(img)

        starts = range(0, out_h, rows)
        if pool is None:
            for oy in starts:
                one(oy)
        else:
            for future in [pool.submit(one, oy) for oy in starts]:
                future.result()
        return out

    def best_level_for(self, downsample: float) -> int:
        """Coarsest level that is still at least as fine as ``downsample``."""
        best = 0
        for i in range(self.level_count):
            if max(self.level_downsample_xy(i)) <= downsample * (1 + 1e-3):
                best = i if self.level_downsamples[i] >= self.level_downsamples[best] else best
        return best

    # -- lifecycle ----------------------------------------------------------
    def close(self) -> None:
        """Release file handles."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = f"{self.mpp.x:.4g}x{self.mpp.y:.4g} ({self.mpp.source})" if self.mpp else "unknown"
        return f"<{type(self).__name__} {self.path.name} {w}x{h} levels={self.level_count} mpp={mpp}>"


def level0_location(x: int, y: int, downsample: float) -> tuple[int, int]:
    """Level-0 location that OpenSlide/tiffslide map back to level pixel (x, y).

    Both divide the level-0 location by the level's (mean) downsample and truncate,
    so the smallest integer at or above ``x · downsample`` lands on ``x`` exactly.
    """
    def one(v: int) -> int:
        loc = math.ceil(v * downsample - 1e-6)
        return loc + 1 if int(loc / downsample) < v else loc
    return one(x), one(y)


def rgba_to_rgb(arr: np.ndarray) -> np.ndarray:
    """Composite RGBA onto white (transparent = outside the scanned area = glass)."""
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 3:
        return arr
    if arr[..., 3].min() == 255:
        return np.ascontiguousarray(arr[..., :3])
    rgb, a = arr[..., :3].astype(np.uint16), arr[..., 3:4].astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
