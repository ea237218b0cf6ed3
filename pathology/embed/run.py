"""Embed one bag: its patches through an encoder into ``/features/<encoder>``, atomically.

The bag is copied to a temporary file beside it while the encoder runs (``staging``); the
features, kept in memory until then (N × D: tens of MB for a large slide), are written into
the copy, and the copy replaces the bag only when complete: an interrupted run leaves the
bag as it was (HDF5 files opened for writing can be corrupted by a crash; the original
never is).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..bag import SCHEMA, BagError, close_hdf5, open_bag
from ..batch import Outcome
from ..encoders import Encoder
from ..errors import UserError, storage_errors
from ..inputs import SlideInput
from .patches import bag_patches
from .staging import StagedCopy

log = logging.getLogger(__name__)

DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class EmbedOptions:
    batch_size: int = 64
    workers: int = 0                 # DataLoader worker processes (0: load in the main process)
    dtype: str = "float16"
    overwrite: bool = False
    slides: Path | None = None       # folder holding the slides of coords-only bags (else the recorded path)
    threads: int = 2                 # decode threads when patches are re-read from a slide
    verify_slides: bool = False      # check a re-read slide by the whole file's SHA-256


def existing_features(bag: Path, name: str) -> dict | None:
    """The attrs of ``/features/<name>`` in ``bag``, or None when absent."""
    with open_bag(bag) as f:
        if f.attrs.get("schema") != SCHEMA:
            raise BagError(f"{bag}: not a pathology bag (schema {f.attrs.get('schema')!r}, expected {SCHEMA})")
        node = f.get(f"features/{name}")
        return None if node is None else dict(node.attrs)


def patch_loader(bag: Path, options: EmbedOptions, device: torch.device) -> tuple[Dataset, DataLoader]:
    """The bag's patches (stored, or re-read from its slide) and the DataLoader that batches them."""
    slide = None
    if options.slides is not None:
        with open_bag(bag) as f:
            slide = options.slides / Path(str(f.attrs.get("slide_path", ""))).name
    dataset = bag_patches(bag, options.batch_size, slide, options.threads, options.verify_slides)
    workers = min(options.workers, 1) if isinstance(dataset, IterableDataset) else options.workers
    return dataset, DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                               prefetch_factor=4 if workers else None)


def write_features(path: Path, name: str, features: np.ndarray, attrs: dict, bag: Path | None = None) -> None:
    """``/features/<name>`` in the HDF5 file at ``path`` (the staged copy of ``bag``), replacing
    any earlier one. A full disk is a :class:`pathology.errors.StorageError` naming ``bag``; the
    file is closed whatever happens (:func:`pathology.bag.close_hdf5`)."""
    with storage_errors(bag or path):
        f = h5py.File(path, "r+")
        try:
            group = f.require_group("features")
            if name in group:
                del group[name]
            out = group.create_dataset(name, data=features,
                                       chunks=(max(1, min(len(features), 1024)), features.shape[1])
                                       if len(features) else None)
            out.attrs.update(attrs)
        except BaseException:
            close_hdf5(f, quiet=True)
            raise
        close_hdf5(f)


def pending_patches(bags: list[SlideInput], encoder: str, overwrite: bool) -> int:
    """Patches to embed across a batch (the progress bar's total); a bag that cannot be read
    counts 0 here (its job reports the problem)."""
    total = 0
    for bag in bags:
        try:
            if overwrite or existing_features(bag.path, encoder) is None:
                with h5py.File(bag.path, "r") as f:
                    total += len(f["coords"])
        except (OSError, KeyError, UserError):
            continue
    return total


def embed_job(bag: SlideInput, advance: Callable[[int], None], *, encoder: Encoder, options: EmbedOptions) -> Outcome:
    """One bag of an embedding batch (:func:`pathology.batch.run_batch`)."""
    return embed_bag(bag.path, encoder, options, advance)


def embed_bag(bag: Path, encoder: Encoder, options: EmbedOptions,
              advance: Callable[[int], None] = lambda n: None) -> Outcome:
    """Write ``/features/<encoder>`` into ``bag`` (skipped when present, unless overwriting)."""
    t0 = time.perf_counter()
    bag, name = Path(bag), encoder.spec.name
    present = existing_features(bag, name)
    if present is not None and not options.overwrite:
        same = present.get("weights_sha256") == encoder.weights_sha256
        return Outcome(bag.stem, "skipped", message=f"features/{name} present" +
                       ("" if same else " (made with other weights; --overwrite replaces them)"))
    dataset, loader = patch_loader(bag, options, encoder.device)
    features = np.empty((dataset.count, encoder.spec.dim), DTYPES[options.dtype])
    batches = iter(loader)  # loader workers fork before the copy thread starts
    staged = StagedCopy(bag)
    try:
        for start, patches in batches:
            batch = encoder(patches).cpu().numpy()
            if not np.isfinite(batch).all():
                raise UserError(f"{bag.name}: encoder {name} gave non-finite features for patches "
                                f"{start}-{start + len(patches) - 1} (check its weights; on a GPU try "
                                "--precision fp32)")
            features[start:start + len(batch)] = batch
            advance(len(batch))
        attrs = {**encoder.feature_attrs(), "batch_size": options.batch_size,
                 "created": datetime.now(UTC).isoformat(timespec="seconds"),
                 "patch_source": "slide" if isinstance(dataset, IterableDataset) else "bag"}
        write_features(staged.ready(), name, features, attrs, bag=bag)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    seconds = time.perf_counter() - t0
    return Outcome(bag.stem, "done", dataset.count, seconds,
                   f"{dataset.count / max(seconds, 1e-9):.0f} patches/s from the {attrs['patch_source']}")
