"""OME-TIFF backend: the pyramids that bfconvert, QuPath and tifffile write, with µm/px from the OME-XML.

OpenSlide opens an OME-TIFF as a generic TIFF: it sees level 0 only and no resolution.
Here the pyramid is read as tifffile reads it: reduced levels stored as sub-IFDs of the
full-resolution image (the OME-TIFF 6 layout), or, from older writers, as further images
of the same file whose sizes are the full image's divided by one factor. The resolution is
``PhysicalSizeX/Y`` of the image's ``Pixels`` element in its own unit (µm when the unit is
absent, as the OME schema says).

Pixels are read through tifffile's chunked reader (any codec tifffile and imagecodecs decode:
JPEG, LZW, deflate, JPEG 2000, ...); the tiler's tile source reads the same pages' tiles
directly (:attr:`Slide.tiff_levels`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .base import Slide, SlideError, resolve_mpp, rgba_to_rgb
from .units import micrometres_per

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# images of an OME file that are never pyramid levels (they carry identifiers or are overviews)
ASSOCIATED = ("label", "macro", "thumbnail", "overview", "barcode")


def can_open(path: Path) -> bool:
    """A TIFF whose first image description is OME-XML."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) not in TIFF_MAGIC:
                return False
    except OSError:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome)
    except Exception:  # noqa: BLE001 - a TIFF tifffile cannot parse is for the other backends to judge
        return False


def _is_associated(series) -> bool:
    name = (series.name or "").lower()
    return any(word in name for word in ASSOCIATED)


def pyramid(tif) -> tuple[int, list[tuple[int, int]]]:
    """The slide's series and its levels as (series, level) pairs of tifffile's reading.

    The slide is the largest image that is not a label or macro; its levels are its sub-IFD
    levels, or, when it has none, the other images that are exact reductions of it (each side
    the full one's divided by the same factor, to within rounding)."""
    candidates = [i for i, s in enumerate(tif.series) if not _is_associated(s)] or list(range(len(tif.series)))
    main = max(candidates, key=lambda i: _size(tif.series[i].levels[0])[0] * _size(tif.series[i].levels[0])[1])
    series = tif.series[main]
    if len(series.levels) > 1:
        return main, [(main, k) for k in range(len(series.levels))]
    w0, h0 = _size(series.levels[0])
    reductions = []
    for i in candidates:
        level = tif.series[i].levels[0]
        w, h = _size(level)
        if i == main or level.dtype != series.dtype or _samples(level) != _samples(series.levels[0]):
            continue
        factor = w0 / w
        if factor > 1 and abs(w0 / factor - w) <= 1 and abs(h0 / factor - h) <= 1 + h0 / factor * 1e-3:
            reductions.append((w, i))
    return main, [(main, 0)] + [(i, 0) for _, i in sorted(reductions, reverse=True)]


def _size(level) -> tuple[int, int]:
    axes, shape = level.axes, level.shape
    return int(shape[axes.index("X")]), int(shape[axes.index("Y")])


def _samples(level) -> int:
    axes, shape = level.axes, level.shape
    return int(shape[axes.index("S")]) if "S" in axes else int(shape[axes.index("C")]) if "C" in axes else 1


def ome_mpp(xml: str, index: int, size: tuple[int, int]) -> tuple[tuple[float, float] | None, str]:
    """µm/px of OME image ``index`` (the one of ``size`` if ``index`` is not it) from its
    ``PhysicalSizeX/Y`` and their units; (None, why) when absent or not a length."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        return None, f"its OME-XML does not parse ({exc})"
    pixels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"]
    if not pixels:
        return None, "its OME-XML has no Pixels element"
    chosen = pixels[index] if index < len(pixels) else pixels[0]
    fits = lambda p: (p.get("SizeX"), p.get("SizeY")) == (str(size[0]), str(size[1]))
    if not fits(chosen):
        chosen = next((p for p in pixels if fits(p)), chosen)
    found = []
    for axis in "XY":
        value, unit = chosen.get(f"PhysicalSize{axis}"), chosen.get(f"PhysicalSize{axis}Unit", "µm")
        if value is None:
            return None, f"no PhysicalSize{axis} in its OME-XML"
        per = micrometres_per(unit)
        if per is None:
            return None, f"PhysicalSize{axis}Unit {unit!r} in its OME-XML is not a length unit"
        try:
            found.append(float(value) * per)
        except ValueError:
            return None, f"PhysicalSize{axis} {value!r} in its OME-XML is not a number"
    return (found[0], found[1]), ""


class OmeTiffSlide(Slide):
    backend = "ometiff"

    def __init__(self, path: str | Path, mpp: float | None = None):
        import tifffile
        import zarr

        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:
            raise SlideError(path, f"tifffile cannot open it ({type(exc).__name__}: {exc})") from exc
        try:
            main, levels = pyramid(self._tif)
            first = self._tif.series[main].levels[0]
            if first.dtype != np.uint8 or _samples(first) not in (1, 3, 4):
                raise SlideError(path, f"not a brightfield RGB image ({_samples(first)} channels of {first.dtype}); "
                                       "only 8-bit RGB or grey OME-TIFFs are read")
            self.tiff_levels = levels
            self._levels = [self._tif.series[s].levels[k] for s, k in levels]
            dims = [_size(level) for level in self._levels]
            self._arrays = [zarr.open(self._tif.series[s].aszarr(level=k), mode="r") for s, k in levels]
            found, problem = ome_mpp(self._tif.ome_metadata or "", main, dims[0])
            super().__init__(path, dims, resolve_mpp(path, found, "OME-XML PhysicalSizeX/Y", mpp, problem))
        except SlideError:
            self._tif.close()
            raise
        except Exception as exc:
            self._tif.close()
            raise SlideError(path, f"not an OME-TIFF pyramid tifffile can read ({type(exc).__name__}: {exc})") from exc

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        arr, axes = self._arrays[level], self._levels[level].axes
        index = tuple(slice(y, y + h) if a == "Y" else slice(x, x + w) if a == "X"
                      else slice(None) if a in "SC" and _channel_axis(axes) == a else 0 for a in axes)
        kept = [a for a in axes if a in "YX" or (a in "SC" and _channel_axis(axes) == a)]
        region = np.asarray(arr[index])
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(_channel_axis(axes))] if len(kept) == 3 else [])
        return rgba_to_rgb(np.ascontiguousarray(np.transpose(region, order)))

    def close(self) -> None:
        self._tif.close()


def _channel_axis(axes: str) -> str | None:
    """The axis holding the colour channels: samples, else OME channels."""
    return "S" if "S" in axes else "C" if "C" in axes else None

