"""Factories for the tests' inputs: real pyramidal TIFF/SVS slides, bags in this project's
format, and toy cohorts with a known signal. One place, so every test writes them the same way."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import tifffile

DATA = Path(__file__).parent / "data"


def write_pyramid_tiff(path: Path, image: np.ndarray, downsamples=(1, 4, 16), mpp: float | None = 0.25,
                       tile: int = 256, compression: str = "jpeg", aperio: bool = True) -> Path:
    """A real pyramidal TIFF (Aperio SVS style when ``aperio``) of ``image``, with
    exact reduced levels (block means), as scanners write them."""
    h, w = image.shape[:2]
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, ds in enumerate(downsamples):
            lh, lw = h // ds, w // ds
            level = image[:lh * ds, :lw * ds].reshape(lh, ds, lw, ds, 3).mean(axis=(1, 3)).astype(np.uint8) \
                if ds > 1 else image
            if aperio:
                desc = (f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90"
                        + (f"|AppMag = 40|MPP = {mpp}" if mpp and i == 0 else "")
                        + ("" if i == 0 else f" -> {lw}x{lh}"))
            else:
                desc = None
            kwargs = {}
            if not aperio and mpp and i == 0:
                kwargs = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
            tif.write(level, tile=(tile, tile), compression=compression, photometric="rgb",
                      description=desc, subfiletype=0 if aperio or i == 0 else 1, metadata=None, **kwargs)
            if aperio and i == 0:  # Aperio's second page is a stripped thumbnail
                tif.write(image[::32, ::32].copy(), photometric="rgb", compression="jpeg",
                          description=f"Aperio Image Library v12.0.0\r\n{w}x{h} -> thumbnail", metadata=None)
    return path


ENCODER = "toy-enc"
DIM = 16


def write_bag(path: Path, features: np.ndarray | dict[str, np.ndarray], *, coords: np.ndarray | None = None,
              encoder: str = ENCODER, dtype: np.dtype | None = np.float16, weights_sha256: str = "0" * 64) -> Path:
    """One bag in the ``pathology-bag/1`` layout, as `pathology tile` + `pathology embed` leave it.

    ``features``: one (N, D) array, stored as ``encoder``; or ``{encoder: array}`` for several
    feature sets (``{}``: a bag not embedded yet, ``coords`` give N). Stored as ``dtype``
    (float16, the default of `pathology embed`; None keeps the array's dtype). Coordinates
    default to a 16-wide grid of 256-px patches; ``weights_sha256`` identifies the encoder's weights."""
    sets = features if isinstance(features, dict) else {encoder: features}
    if coords is None:
        n = len(next(iter(sets.values())))
        coords = np.stack([np.arange(n) % 16 * 256, np.arange(n) // 16 * 256], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(schema="pathology-bag/1", slide_id=path.stem, target_mpp=0.5, patch_size=256,
                       tiling=json.dumps({"target_mpp": 0.5, "patch_size": 256}), stain=json.dumps({"method": "none"}))
        f.create_dataset("coords", data=np.asarray(coords).astype(np.int64))
    for name, x in sets.items():
        add_features(path, x, encoder=name, dtype=dtype, weights_sha256=weights_sha256)
    return path


def add_features(path: Path, features: np.ndarray, *, encoder: str = ENCODER,
                 dtype: np.dtype | None = np.float16, weights_sha256: str = "0" * 64) -> Path:
    """Add ``/features/<encoder>`` to an existing bag (one from `pathology tile`, or
    :func:`write_bag`), laid out as `pathology embed` writes it: chunks of 1,024 rows and the
    encoder's attributes."""
    x = np.asarray(features) if dtype is None else np.asarray(features).astype(dtype)
    with h5py.File(path, "r+") as f:
        ds = f.require_group("features").create_dataset(
            encoder, data=x, chunks=(max(1, min(len(x), 1024)), *x.shape[1:]) if len(x) else None)
        ds.attrs.update(encoder=encoder, weights_sha256=weights_sha256, dim=x.shape[-1], input_size=224,
                        mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    return path


def write_clam(path: Path, features: np.ndarray, coords: np.ndarray | None = None, name: str = "features") -> Path:
    """A feature file of another toolkit: datasets at the root, CLAM's (N, D) or TRIDENT's
    (1, N, D) ``/features`` (STAMP: ``name="feats"``), with optional ``/coords``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=features)
        if coords is not None:
            f.create_dataset("coords", data=coords)
    return path


def write_cohort(root: Path, *, n_patients: int = 24, slides_per_patient: int = 1, seed: int = 0,
                 n_instances: tuple[int, int] = (12, 30), margin: float = 0.1,
                 missing: dict[str, float] | None = None) -> Path:
    """Bags + manifest of a toy cohort; returns the manifest path (bags in ``root/bags``).

    Each patient has a hidden share ``z`` of "tumour-like" instances (features shifted along
    dimension 0): ``er`` = z > 0.35, ``pr`` is an independent coin tied to dimension 1, and
    survival times are exponential with hazard exp(10 z) (censored at random, ~25%; the
    c-index of the true z is about 0.83).
    ``missing`` = {column: share of patients whose label is blanked}.
    """
    rng = np.random.default_rng(seed)
    bags = root / "bags"
    bags.mkdir(parents=True, exist_ok=True)
    rows = []
    half = n_patients // 2  # evenly spread on both sides of the ER cut-off 0.35, ``margin`` away from it
    z = rng.permutation(np.r_[np.linspace(0.02, 0.35 - margin, half),
                              np.linspace(0.35 + margin, 0.7, n_patients - half)])
    pr = rng.permutation(np.arange(n_patients) % 2)
    time = rng.exponential(1 / np.exp(10 * z)) * 12
    event = (rng.random(n_patients) > 0.25).astype(int)
    for p in range(n_patients):
        for s in range(slides_per_patient):
            n = int(rng.integers(*n_instances))
            x = rng.normal(0, 1, (n, DIM))
            k = int(round(z[p] * n))
            x[:k, 0] += 3.0
            x[:, 1] += 1.5 * pr[p]
            slide = f"P{p:02d}-S{s}"
            write_bag(bags / f"{slide}.h5", x)
            rows.append({"slide_id": slide, "patient_id": f"P{p:02d}", "er": "positive" if z[p] > 0.35 else "negative",
                         "pr": str(pr[p]), "os_time": round(float(time[p]), 4), "os_event": int(event[p])})
    table = pd.DataFrame(rows)
    for column, share in (missing or {}).items():
        blank = rng.choice(n_patients, int(round(share * n_patients)), replace=False)
        table.loc[table["patient_id"].isin([f"P{p:02d}" for p in blank]), column] = ""
    path = root / "manifest.csv"
    table.to_csv(path, index=False)
    return path


HER2_CLASSES = ("0", "1+", "2+", "3+")
STAGES = ("I", "II", "III")


def write_task_cohort(root: Path, *, n_patients: int = 40, seed: int = 0, n_instances: tuple[int, int] = (16, 32),
                      missing: dict[str, float] | None = None) -> Path:
    """Bags + manifest of a toy cohort with one task of every kind and clinical covariates, each
    with a planted signal of known strength; returns the manifest path (bags in ``root/bags``).

    - ``her2`` (multiclass ``0``, ``1+``, ``2+``, ``3+``, balanced): a patient of class c has 40%
      of its instances shifted by +3 along dimension 4 + c (the other class directions untouched);
    - ``ki67`` (regression, a percentage 5-80): every instance is shifted by 3 * ki67 / 100
      along dimension 8, so any weighted mean of the instances reads the value;
    - ``er`` (binary): an independent coin shifting every instance by +1.5 along dimension 1;
    - ``age`` (numeric covariate), ``stage`` (categorical covariate ``I``/``II``/``III``) and
      ``relapse`` (binary): relapse = stage III, or stage II and age > 60, flipped for 5% of
      patients, and no dimension of the bags carries it: only the covariates can predict it;
    - ``os_time``/``os_event``: exponential with hazard exp(1.5 * her2 class).
    ``missing`` = {column: share of patients whose cell is blanked}."""
    rng = np.random.default_rng(seed)
    bags = root / "bags"
    bags.mkdir(parents=True, exist_ok=True)
    her2 = rng.permutation(np.arange(n_patients) % 4)
    ki67 = rng.uniform(5, 80, n_patients).round(1)
    er = rng.permutation(np.arange(n_patients) % 2)
    age = rng.integers(35, 85, n_patients)
    stage = rng.permutation(np.arange(n_patients) % 3)
    relapse = ((stage == 2) | ((stage == 1) & (age > 60))).astype(int)
    flip = rng.choice(n_patients, max(1, n_patients // 20), replace=False)
    relapse[flip] = 1 - relapse[flip]
    time = rng.exponential(1 / np.exp(1.5 * her2)) * 24
    event = (rng.random(n_patients) > 0.2).astype(int)
    rows = []
    for p in range(n_patients):
        n = int(rng.integers(*n_instances))
        x = rng.normal(0, 1, (n, DIM))
        x[rng.permutation(n)[:int(round(0.4 * n))], 4 + her2[p]] += 3.0
        x[:, 8] += 3.0 * ki67[p] / 100
        x[:, 1] += 1.5 * er[p]
        slide = f"P{p:02d}-S0"
        write_bag(bags / f"{slide}.h5", x)
        rows.append({"slide_id": slide, "patient_id": f"P{p:02d}", "er": str(er[p]), "her2": HER2_CLASSES[her2[p]],
                     "ki67": ki67[p], "age": int(age[p]), "stage": STAGES[stage[p]], "relapse": str(relapse[p]),
                     "os_time": round(float(time[p]), 4), "os_event": int(event[p])})
    table = pd.DataFrame(rows)
    for column, share in (missing or {}).items():
        blank = rng.choice(n_patients, int(round(share * n_patients)), replace=False)
        table[column] = table[column].astype(object)
        table.loc[blank, column] = ""
    path = root / "manifest.csv"
    table.to_csv(path, index=False)
    return path


def write_patient_cohort(root: Path, *, n_patients: int = 32, slides_per_patient: int = 3, seed: int = 0,
                         n_instances: tuple[int, int] = (12, 24)) -> Path:
    """Bags + manifest where a patient's label lives in ONE of their slides: a positive patient
    (``tumor`` 1, half of them) has 40% of the instances of one randomly chosen slide shifted by
    +3 along dimension 0, and their other slides look like a negative patient's. A slide-level
    model must learn from positive-labelled slides that show nothing; a model of the pooled
    patient bag sees the evidence in every positive case. Returns the manifest path."""
    rng = np.random.default_rng(seed)
    bags = root / "bags"
    bags.mkdir(parents=True, exist_ok=True)
    tumor = rng.permutation(np.arange(n_patients) % 2)
    rows = []
    for p in range(n_patients):
        carrier = int(rng.integers(slides_per_patient))
        for s in range(slides_per_patient):
            n = int(rng.integers(*n_instances))
            x = rng.normal(0, 1, (n, DIM))
            if tumor[p] and s == carrier:
                x[rng.permutation(n)[:int(round(0.4 * n))], 0] += 3.0
            slide = f"P{p:02d}-S{s}"
            write_bag(bags / f"{slide}.h5", x)
            rows.append({"slide_id": slide, "patient_id": f"P{p:02d}", "tumor": str(tumor[p])})
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
