"""Turn command-line INPUTS (files, folders, globs, a manifest CSV) into named slides.

A manifest may carry per-slide settings beside ``slide_id`` and ``slide_path``: ``mpp``
(the slide's level-0 µm/px, for plain images and scanners that record none; it overrides the
slide's metadata and ``--mpp`` for that slide, as ``--mpp`` does for the whole batch) and
``roi_path`` (read by :func:`pathology.roi.roi_source`).
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from .errors import InputError
from .slide import SLIDE_EXTENSIONS, is_folder_slide, slide_exists
from .slide.base import MPP_PLAUSIBLE
from .table import read_table, where

# Folder scans pick up whole-slide formats only: plain images in a slide folder are
# usually sidecars (masks, thumbnails). Name plain images explicitly or by glob.
WSI_EXTENSIONS = SLIDE_EXTENSIONS - {".png", ".jpg", ".jpeg"}


MPP_COLUMN = "mpp"
Options = TypeVar("Options")   # a frozen dataclass with an ``mpp`` field (TileOptions, IHCOptions)


@dataclass(frozen=True)
class SlideInput:
    slide_id: str
    path: Path
    mpp: float | None = None   # level-0 µm/px from the manifest's ``mpp`` column; None: metadata or --mpp

    def with_mpp(self, options: Options) -> Options:
        """``options`` (a frozen dataclass with an ``mpp`` field) with this slide's µm/px, when the
        manifest gives one: a slide's own value wins over the batch's ``--mpp``."""
        return options if self.mpp is None else replace(options, mpp=self.mpp)


def slide_id_for(path: Path) -> str:
    """A slide's id from its file name (``name.ome.tif`` and ``name.ome.zarr`` are ``name``); a
    DICOM series is named by its folder."""
    if path.suffix.lower() == ".dcm":
        return path.parent.name
    return path.stem[:-4] if path.stem.lower().endswith(".ome") and len(path.stem) > 4 else path.stem


def _walk(folder: Path) -> list[Path]:
    """Files and folder slides under ``folder``, without looking inside folder slides."""
    out = []
    for p in sorted(folder.iterdir()):
        if is_folder_slide(p):
            out.append(p)
        elif p.is_dir():
            out += _walk(p)
        else:
            out.append(p)
    return out


def _scan_folder(folder: Path) -> list[Path]:
    found, dicom_dirs = [], set()
    for p in _walk(folder):
        if p.suffix.lower() not in WSI_EXTENSIONS or not slide_exists(p):
            continue
        if p.suffix.lower() == ".dcm":  # one slide per DICOM folder: OpenSlide finds the rest
            if p.parent in dicom_dirs:
                continue
            dicom_dirs.add(p.parent)
        found.append(p)
    return found


def read_manifest_slides(manifest: Path) -> list[SlideInput]:
    """Slides of a cohort manifest (``slide_id``, ``slide_path`` relative to the manifest; any
    delimiter :func:`pathology.table.read_table` reads). Every problem is reported at once with its row."""
    problems: list[str] = []
    table = read_table(manifest, problems)
    table.require(("slide_id", "slide_path"), problems)
    if problems:
        raise InputError("\n".join(problems))
    out, seen = [], {}
    for i, row in enumerate(table.rows):
        sid, rel, at = row["slide_id"], row["slide_path"], where(table.loc(i))
        if not sid:
            problems.append(f"{at}: empty slide_id")
            continue
        if sid in seen:
            problems.append(f"{at}: duplicate slide_id {sid!r} (first on {seen[sid]})")
            continue
        seen[sid] = at
        if not rel:
            problems.append(f"{at}: empty slide_path for {sid!r}")
            continue
        path = Path(rel) if Path(rel).is_absolute() else manifest.parent / rel
        mpp = _mpp(row.get(MPP_COLUMN, ""), where(table.loc(i), MPP_COLUMN), problems)
        if not path.exists():
            problems.append(f"{at}: slide_path {rel!r} not found ({path})")
            continue
        out.append(SlideInput(sid, path, mpp))
    if problems:
        raise InputError("\n".join(problems))
    return out


def _mpp(cell: str, at: str, problems: list[str]) -> float | None:
    """A manifest's ``mpp`` cell: empty (None: the slide's metadata, or --mpp) or a positive
    number of µm per level-0 pixel, plausible for a microscope (the range metadata is held to)."""
    if not cell:
        return None
    try:
        value = float(cell.replace(",", ".") if cell.count(",") == 1 and "." not in cell else cell)
    except ValueError:
        problems.append(f"{at}: {cell!r} is not a number (µm per level-0 pixel, e.g. 0.25 for 40x, 0.5 for 20x)")
        return None
    lo, hi = MPP_PLAUSIBLE
    if not math.isfinite(value) or not lo <= value <= hi:
        problems.append(f"{at}: {cell!r} is not a plausible µm/px (expected {lo:g}-{hi:g}, e.g. 0.25 for 40x, "
                        "0.5 for 20x)")
        return None
    return value


def expand_inputs(inputs: list[str]) -> list[SlideInput]:
    """Slides named by ``inputs``, sorted by id; raises :class:`InputError` listing
    every input that matches nothing and every duplicate id."""
    slides: list[SlideInput] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.suffix.lower() in (".csv", ".tsv") and path.is_file():
            try:
                slides += read_manifest_slides(path)
            except InputError as exc:
                problems.append(str(exc))
        elif path.is_dir() and not is_folder_slide(path):
            found = _scan_folder(path)
            if not found:
                problems.append(f"{item}: folder holds no slides ({', '.join(sorted(WSI_EXTENSIONS))})")
            slides += [SlideInput(slide_id_for(p), p) for p in found]
        elif path.exists():
            slides.append(SlideInput(slide_id_for(path), path))
        elif glob.has_magic(item):
            matches = [Path(p) for p in sorted(glob.glob(item, recursive=True))
                       if slide_exists(Path(p))]
            if not matches:
                problems.append(f"{item}: pattern matches no file")
            slides += [SlideInput(slide_id_for(p), p) for p in matches]
        else:
            problems.append(f"{item}: no such file or folder")
    by_id: dict[str, list[SlideInput]] = {}
    for s in slides:
        by_id.setdefault(s.slide_id, []).append(s)
    for sid, group in by_id.items():
        paths = sorted({str(s.path.resolve()) for s in group})
        if len(paths) > 1:
            problems.append(f"slide id {sid!r} names several files: {', '.join(paths)} (rename one, or use a manifest)")
    if problems:
        raise InputError("\n".join(problems))
    return sorted({s.slide_id: s for s in slides}.values(), key=lambda s: s.slide_id)


def expand_bags(inputs: list[str]) -> list[SlideInput]:
    """Bag files, folders (their ``*.h5``) or globs, named by file stem; every problem reported at once."""
    found: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            hits = sorted(path.glob("*.h5"))
        elif path.is_file():
            hits = [path]
        else:
            hits = sorted(Path(p) for p in glob.glob(item) if p.endswith(".h5"))
        if not hits:
            problems.append(f"{item}: no bag (.h5) found")
        found.extend(hits)
    bags = list(dict.fromkeys(p.resolve() for p in found))
    stems: dict[str, Path] = {}
    for bag in bags:
        if bag.stem in stems:
            problems.append(f"{bag}: same slide id as {stems[bag.stem]}")
        stems[bag.stem] = bag
    if problems:
        raise InputError("\n".join(problems))
    return [SlideInput(b.stem, b) for b in bags]


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (0 ≤ i < n) → (i, n)."""
    if spec is None:
        return None
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise InputError(f"--shard takes i/n with 0 <= i < n (e.g. 0/4 ... 3/4), got {spec!r}") from None
    if not 0 <= i < n:
        raise InputError(f"--shard takes i/n with 0 <= i < n (e.g. 0/4 ... 3/4), got {spec!r}")
    return i, n


def take_shard(slides: list[SlideInput], shard: tuple[int, int] | None) -> list[SlideInput]:
    """Deterministic share of a batch: every n-th slide by sorted id, starting at i."""
    if shard is None:
        return slides
    i, n = shard
    return sorted(slides, key=lambda s: s.slide_id)[i::n]
