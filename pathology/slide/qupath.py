"""QuPath's coordinate frame: which level-0 pixel QuPath calls (0, 0).

QuPath opens the formats OpenSlide reads with its OpenSlide image server, and that server crops
the image to OpenSlide's bounds by default: when all four of ``openslide.bounds-x``, ``-y``,
``-width`` and ``-height`` are present and parse as integers, QuPath's pixel (x, y) is OpenSlide's
level-0 pixel (x + bounds-x, y + bounds-y) (its ``readTile`` adds ``boundsX``/``boundsY`` to every
request; only the ``--no-crop`` server argument turns this off; the default since QuPath 0.2,
``useBoundingBoxes = true``). Source: QuPath, ``qupath-extension-openslide/src/main/java/qupath/
lib/images/servers/openslide/OpenslideImageServer.java`` (constructor and ``readTile``).

OpenSlide reports bounds for MIRAX (.mrxs), Leica SCN, Argos and, since 4.0.1, for generic TIFFs
with missing tiles (the box around the tiles present); Aperio, Hamamatsu and the like start at
the origin. Formats QuPath reads with Bio-Formats (OME-TIFF, OME-Zarr) and plain images have no
offset. So the frame depends on the file, not on which of this project's backends reads it: the
bounds are asked of OpenSlide whenever OpenSlide can open the file.
"""

from __future__ import annotations

from pathlib import Path

BOUNDS = ("openslide.bounds-x", "openslide.bounds-y", "openslide.bounds-width", "openslide.bounds-height")


def origin_from_properties(properties) -> tuple[int, int]:
    """QuPath's (0, 0) in level-0 pixels, from OpenSlide properties, as QuPath's server decides it."""
    if not all(key in properties for key in BOUNDS):
        return 0, 0
    try:
        x, y, _, _ = (int(properties[key]) for key in BOUNDS)  # Java's Integer.parseInt: integers only
    except ValueError:
        return 0, 0
    return x, y


def openslide_origin(path: str | Path) -> tuple[int, int]:
    """QuPath's (0, 0) for a file, if OpenSlide opens it (its bounds); (0, 0) otherwise."""
    import openslide

    try:
        if openslide.OpenSlide.detect_format(str(path)) is None:
            return 0, 0
        with openslide.OpenSlide(str(path)) as osr:
            return origin_from_properties(osr.properties)
    except Exception:  # noqa: BLE001 - a file OpenSlide cannot open is not read by QuPath's OpenSlide server
        return 0, 0
