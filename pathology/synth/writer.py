"""Write a synthetic slide as a pyramidal Aperio SVS, with its ground truth beside it.

Level 0 is rendered and JPEG-compressed one row of tiles at a time, in blocks of a
few tiles, so memory stays flat whatever the slide size. Each block is also
shrunk 4× on the fly into a raw temporary file; the coarser levels (16×, 64×)
and the thumbnail are shrunk from that file strip by strip afterwards.

Layout (what OpenSlide's and tiffslide's Aperio readers expect): level 0 tiled,
then a stripped JPEG thumbnail, then the reduced levels as tiled pages (not
marked "reduced": tifffile's SVS parser stops at such pages). No label or macro.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .. import __version__
from ..publish import publish_text, publish_with, publishing, temporary_folder
from .config import SynthConfig
from .level0 import Progress, level0_tiles
from .pyramid import Spool, level_tiles, shrink_spool, thumbnail
from .render import SlideRenderer

log = logging.getLogger(__name__)

SCHEMA = "pathology-synth/1"
LEVEL_DOWNSAMPLES = (4, 16, 64)


@dataclass(frozen=True)
class SynthTruth:
    """Paths of a written slide and its ground truth, and the truth itself (the JSON content)."""

    slide: Path
    tissue_mask: Path
    tumor_mask: Path
    metadata: Path
    info: dict


def truth_paths(slide: Path) -> tuple[Path, Path, Path]:
    """``<stem>.tissue.png``, ``<stem>.tumor.png`` and ``<stem>.json`` beside ``slide``."""
    return (slide.with_name(f"{slide.stem}.tissue.png"), slide.with_name(f"{slide.stem}.tumor.png"),
            slide.with_name(f"{slide.stem}.json"))


def _aperio(config: SynthConfig, tail: str) -> str:
    w, h, t = config.width, config.height, config.tile_size
    return f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({t}x{t}){tail}"


def write_synthetic_slide(path: str | Path, config: SynthConfig = SynthConfig(),
                          progress: Progress | None = None, processes: int = 0) -> SynthTruth:
    """Render ``config`` into an Aperio SVS at ``path`` and write the ground truth beside it.

    The slide is written under a temporary name and renamed when complete; the masks
    (``<stem>.tissue.png``, ``<stem>.tumor.png``, 0/255 at ``config.mask_downsample``)
    and ``<stem>.json`` follow. Returns their paths and the JSON content.
    ``processes`` > 0 renders level 0 in that many worker processes instead of two
    threads: faster on a large slide, but a second of start-up, and the caller's main
    module must be import-safe (``if __name__ == "__main__":``).
    """
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    renderer = SlideRenderer(config)
    w, h, t, q = config.width, config.height, config.tile_size, config.quality
    levels = [d for d in LEVEL_DOWNSAMPLES if max(w // d, h // d) >= t]
    # level-0 tiles arrive JPEG-encoded (level0.jpeg_options: what tifffile does for these
    # arguments) and are stored as they are; the reduced levels are encoded by tifffile
    options = dict(tile=(t, t), compression="jpeg", compressionargs={"level": q}, photometric="rgb",
                   metadata=None, subfiletype=0)
    mag = f"{10 / config.mpp:g}"
    with temporary_folder(path.parent, f"{path.name}.synth") as tmp:  # swept if this process is killed
        spools = {d: Spool(Path(tmp) / f"ds{d}.raw", w // d) for d in LEVEL_DOWNSAMPLES}
        level0 = level0_tiles(renderer, spools[4], progress, processes)
        try:
            with publishing(path) as partial, tifffile.TiffWriter(partial, bigtiff=w * h * 3 > 2 ** 31) as tif:
                tif.write(level0, shape=(h, w, 3), dtype=np.uint8,
                          description=_aperio(config, f" JPEG/RGB Q={q}|AppMag = {mag}"
                                              f"|MPP = {config.mpp}|Filename = {path.stem}"), **options)
                shrink_spool(spools[4], spools[16])
                shrink_spool(spools[16], spools[64])
                thumb = thumbnail(spools)
                tif.write(thumb, photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                          metadata=None, description=f"Aperio Image Library v12.0.0\r\n{w}x{h} -> "
                                                     f"{thumb.shape[1]}x{thumb.shape[0]} - ")
                for d in levels:
                    lw, lh = spools[d].width, spools[d].rows
                    tif.write(level_tiles(spools[d], t), shape=(lh, lw, 3), dtype=np.uint8,
                              description=_aperio(config, f" -> {lw}x{lh} JPEG/RGB Q={q}"), **options)
        finally:
            level0.close()
            for s in spools.values():
                s.close()
    truth = _write_truth(path, renderer, [1, *levels])
    log.info("wrote %s: %dx%d, %d levels, tumor %.0f%% of tissue, in %.1fs", path.name, w, h, len(levels) + 1,
             100 * truth.info["tumor_fraction"], time.perf_counter() - start)
    return truth


def _write_truth(path: Path, renderer: SlideRenderer, downsamples: list[int]) -> SynthTruth:
    """The masks (0/255 PNG, one pixel per ``mask_downsample``² level-0 block) and the JSON."""
    cfg, fields, recipe = renderer.config, renderer.fields, renderer.recipe
    tissue_path, tumor_path, json_path = truth_paths(path)
    tissue, tumor = fields.tissue_mask, fields.tumor_mask
    for mask, mask_path in ((tissue, tissue_path), (tumor, tumor_path)):
        publish_with(mask_path, lambda fh, m=mask: Image.fromarray(m.astype(np.uint8) * 255).save(fh, format="PNG"))
    info = {
        "schema": SCHEMA,
        "slide": path.name,
        "tissue_mask": tissue_path.name,
        "tumor_mask": tumor_path.name,
        "width": cfg.width,
        "height": cfg.height,
        "mpp": cfg.mpp,
        "seed": cfg.seed,
        "tile_size": cfg.tile_size,
        "jpeg_quality": cfg.quality,
        "levels": [{"downsample": d, "width": cfg.width // d, "height": cfg.height // d} for d in downsamples],
        "mask_downsample": fields.ds,
        "mask_size": [int(tissue.shape[1]), int(tissue.shape[0])],
        "tissue_fraction": float(tissue.mean()),
        "tumor_fraction": float(tumor.sum() / tissue.sum()) if tissue.any() else 0.0,
        "tumor_fraction_target": cfg.tumor_fraction,
        "fragments": fields.fragments,
        "stain_variation": cfg.stain_variation,
        "stains": {name: {"od_rgb": [round(float(v), 6) for v in vec], "intensity": recipe.stain_scale(name)}
                   for name, vec in zip(recipe.stains, recipe.stain_matrix(), strict=True)},
        "recipe": {"name": recipe.name, "background_od": list(recipe.background_od),
                   "compartments": {k: asdict(c) for k, c in recipe.compartments.items()},
                   "nuclei": [asdict(k) for k in recipe.nuclei]},
        "config": cfg.to_dict(),
        "software_version": __version__,
    }
    text = json.dumps(info, indent=2)
    publish_text(json_path, text + "\n")
    info = json.loads(text)  # exactly what a reader of the file gets (lists, not tuples)
    return SynthTruth(slide=path, tissue_mask=tissue_path, tumor_mask=tumor_path, metadata=json_path, info=info)
