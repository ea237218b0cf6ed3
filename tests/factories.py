"""Factories for the tests' inputs: real pyramidal TIFF/SVS slides, bags in this project's
format, and toy cohorts with a known signal; and the command-line runner the tests share.
One place, so every test writes them the same way."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import tifffile

from pathology.bag import SCHEMA, open_bag, read_patches

DATA = Path(__file__).parent / "data"


def invoke(app, *args: object):
    """Run a typer ``app`` with ``args`` in a wide terminal, so messages are not wrapped."""
    from typer.testing import CliRunner

    return CliRunner(env={"COLUMNS": "500"}).invoke(app, [str(a) for a in args])


def mil_cli(*args: object):
    """Run the ``mil`` command line (see :func:`invoke`)."""
    from mil.cli import app

    return invoke(app, *args)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


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


def pyramid_levels(image: np.ndarray, downsamples=(1, 4, 16)) -> list[np.ndarray]:
    """The reduced levels :func:`write_pyramid_tiff` stores: block means of ``image``."""
    h, w = image.shape[:2]
    out = []
    for ds in downsamples:
        lh, lw = h // ds, w // ds
        out.append(image[:lh * ds, :lw * ds].reshape(lh, ds, lw, ds, 3).mean(axis=(1, 3)).astype(np.uint8)
                   if ds > 1 else image)
    return out


def write_ome_tiff(path: Path, image: np.ndarray, downsamples=(1, 4, 16), size: float | None = 0.25,
                   unit: str | None = "µm", tile: int = 256, compression: str = "jpeg",
                   layout: str = "subifd", label: bool = True) -> Path:
    """A real pyramidal OME-TIFF of ``image`` (levels as :func:`pyramid_levels`), as converters
    write them: ``layout="subifd"`` stores reduced levels as sub-IFDs of the full image
    (bfconvert, QuPath, OME-TIFF 6); ``"series"`` as further OME images. ``size`` and ``unit``
    become ``PhysicalSizeX/Y`` and their units (None leaves them out); ``label`` adds a small
    label image, which must never be taken for a level. Written with tifffile."""
    levels = pyramid_levels(image, downsamples)
    meta = {"axes": "YXS"}
    if size is not None:
        meta.update(PhysicalSizeX=size, PhysicalSizeY=size)
        if unit is not None:
            meta.update(PhysicalSizeXUnit=unit, PhysicalSizeYUnit=unit)
    kwargs = dict(tile=(tile, tile), compression=compression, photometric="rgb")
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        if layout == "subifd":
            tif.write(levels[0], subifds=len(levels) - 1, metadata=meta, **kwargs)
            for level in levels[1:]:
                tif.write(level, subfiletype=1, **kwargs)
        else:
            for i, level in enumerate(levels):
                ds = downsamples[i]
                scaled = {**meta, "Name": f"resolution {i}"}
                if size is not None:
                    scaled.update(PhysicalSizeX=size * ds, PhysicalSizeY=size * ds)
                tif.write(level, metadata=scaled, **kwargs)
        if label:
            tif.write(np.full((120, 300, 3), 200, np.uint8), photometric="rgb",
                      metadata={"axes": "YXS", "Name": "label"})
    return path


def write_ome_zarr(path: Path, image: np.ndarray, downsamples=(1, 4, 16), mpp: float | None = 0.25,
                   unit: str | None = "micrometer", version: str = "0.4", axes: str = "cyx", chunk: int = 256,
                   jpeg: bool = False) -> Path:
    """A real OME-Zarr multiscale image of ``image`` (levels as :func:`pyramid_levels`), written
    with zarr as NGFF ``version`` lays it out: 0.4 in zarr v2 (``.zattrs``), 0.5 in zarr v3
    (``zarr.json``, attributes under ``ome``). ``axes`` orders the arrays (``tczyx``, ``cyx``,
    ``yxc``); each dataset's ``scale`` is ``mpp`` times its downsample along x and y, in ``unit``
    (None: no unit). ``jpeg`` compresses chunks with imagecodecs' numcodecs JPEG (zarr v2, axes yxc),
    as slide converters do."""
    import zarr

    fmt = 2 if version == "0.4" else 3
    group = zarr.open_group(path, mode="w", zarr_format=fmt)
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    axes_meta = [{"name": a, "type": kinds[a], **({"unit": unit} if unit and a in "yx" else {})} for a in axes]
    datasets = []
    extra = {}
    if jpeg:
        from imagecodecs.numcodecs import Jpeg
        extra = {"compressors": Jpeg(level=90)}
    for i, (ds, level) in enumerate(zip(downsamples, pyramid_levels(image, downsamples))):
        data = level.reshape(1, 1, *level.shape) if axes == "tczyx" else level
        order = {"yxc": (0, 1, 2), "cyx": (2, 0, 1), "tczyx": (0, 4, 1, 2, 3)}[axes]
        data = np.ascontiguousarray(np.transpose(data, order))
        chunks = tuple(chunk if a in "yx" else n for a, n in zip(axes, data.shape))
        array = group.create_array(str(i), shape=data.shape, chunks=chunks, dtype="uint8", **extra)
        array[...] = data
        scale = [float(mpp or 1) * ds if a in "yx" else 1.0 for a in axes]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    multiscale = {"axes": axes_meta, "datasets": datasets, "name": path.stem}
    if version == "0.4":
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    return path


def write_offset_tiff(path: Path, image: np.ndarray, columns: int = 2, rows: int = 1, tile: int = 256,
                      mpp: float = 0.25) -> Path:
    """A generic tiled pyramid TIFF whose level 0 lacks its first ``columns`` columns and ``rows``
    rows of tiles (TileByteCounts 0, as scanners leave tiles of empty glass unwritten), so OpenSlide
    (>= 4.0.1) reports ``openslide.bounds-x/y`` = (columns, rows) x ``tile``: a slide whose level 0
    does not start at the origin, as MIRAX scans are. The image is white there on every level."""
    image = image.copy()
    image[:rows * tile] = 255
    image[:, :columns * tile] = 255
    write_pyramid_tiff(path, image, mpp=mpp, tile=tile, aperio=False)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        counts = page.tags["TileByteCounts"]
        assert counts.dtype == 4, "LONG byte counts expected"
        across, down = -(-page.shape[1] // tile), -(-page.shape[0] // tile)
        offset = counts.valueoffset
    missing = {r * across + c for r in range(down) for c in range(across) if r < rows or c < columns}
    with open(path, "r+b") as fh:
        for index in sorted(missing):
            fh.seek(offset + 4 * index)
            fh.write(b"\0\0\0\0")
    return path


ENCODER = "toy-enc"
DIM = 16


def write_bag(path: Path, features: np.ndarray | dict[str, np.ndarray], *, coords: np.ndarray | None = None,
              encoder: str = ENCODER, dtype: np.dtype | None = np.float16, weights_sha256: str = "0" * 64) -> Path:
    """One bag in the current ``pathology-bag`` layout (:data:`pathology.bag.SCHEMA`), as
    `pathology tile` + `pathology embed` leave it.

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
        f.attrs.update(schema=SCHEMA, slide_id=path.stem, target_mpp=0.5, patch_size=256,
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


def stored_patches(bag: Path, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
    """A tiled bag's patches, decoded whatever their codec (JPEG chunks need the bag's reader)."""
    with open_bag(bag) as f:
        return read_patches(f, rows)


def stored_bytes(ds: h5py.Dataset) -> bytes:
    """A dataset's content as stored: its values, or for JPEG patches (which plain h5py cannot
    decode) the bytes of each chunk."""
    if ds.attrs.get("codec") == "jpeg":
        return b"".join(ds.id.read_direct_chunk((i, 0, 0, 0))[1] for i in range(len(ds)))
    return ds[()].tobytes()


def bag_content(path: Path) -> dict:
    """Every dataset's bytes and every attribute of a bag but its creation time."""
    out = {}
    with h5py.File(path, "r") as f:
        out.update({f"@{k}": str(v) for k, v in f.attrs.items() if k != "created"})

        def visit(name, node):
            if isinstance(node, h5py.Dataset):
                out[name] = stored_bytes(node)
                out.update({f"{name}@{k}": str(v) for k, v in node.attrs.items() if k != "created"})
        f.visititems(visit)
    return out


# JPEG quantization tables of ITU-T T.81 Annex K, scaled by quality as libjpeg does.
JPEG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69,
                      56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104,
                      113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)
JPEG_CHROMA = np.full((8, 8), 99)
JPEG_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
YCC_TO_RGB_GAIN = 1 + 1.772  # the largest |dRGB| per unit of |dY| + |dC| (B = Y + 1.772 (Cb - 128), JFIF)


def jpeg_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """The luminance and chrominance quantization steps libjpeg uses at ``quality``."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(np.clip((base * scale + 50) // 100, 1, 255) for base in (JPEG_LUMA, JPEG_CHROMA))


def jpeg_bounds(quality: int) -> tuple[float, float]:
    """Error bounds of a 4:4:4 baseline JPEG round trip at ``quality``, in 8-bit RGB levels, from
    its quantization steps Q alone (no image statistics):

    - each 8x8 block's mean, per channel: the block mean is the DC coefficient / 8 and the
      decoder's DC is within Q_00 / 2 of the encoder's, so Y, Cb and Cr block means move by at
      most Q_00 / 16, plus 1/16 for the DC's integer rounding and 0.5 each for the colour
      conversion's and the inverse DCT's rounding; converted to RGB (gain at most 2.772) plus
      0.5 for the output's rounding. Blocks with a decoded 0 or 255 are exempt: clamping there
      moves the mean by more.
    - the RMS over a whole block, per channel: each coefficient's error is at most Q / 2 and the
      DCT is orthonormal (Parseval), so the RMS error of a component is at most
      sqrt(mean(Q^2)) / 2, plus the same rounding; then the same RGB gain.

    At quality 90: 3.97 for block means (measured on CMU-1's patches: at most 1.56) and 28.7
    for a block's RMS (measured: at most 11.6)."""
    luma, chroma = jpeg_tables(quality)
    rounding = 0.5 + 1 / 16 + 0.5
    mean = max(luma[0, 0], chroma[0, 0]) / 16 + rounding
    rms = max(np.sqrt((luma.astype(float) ** 2).mean()), np.sqrt((chroma.astype(float) ** 2).mean())) / 2 + rounding
    return YCC_TO_RGB_GAIN * mean + 0.5, YCC_TO_RGB_GAIN * rms + 0.5


def assert_jpeg_close(decoded: np.ndarray, original: np.ndarray, quality: int) -> None:
    """``decoded`` (k, S, S, 3) is ``original`` through a JPEG round trip at ``quality``, within
    :func:`jpeg_bounds` (S a multiple of 8)."""
    mean_bound, rms_bound = jpeg_bounds(quality)
    k, s = original.shape[:2]
    blocks = (k, s // 8, 8, s // 8, 8, 3)
    d, o = decoded.astype(np.float64).reshape(blocks), original.astype(np.float64).reshape(blocks)
    clean = ~((decoded == 0) | (decoded == 255)).reshape(blocks).any(axis=(2, 4, 5))
    assert clean.mean() > 0.25, "too few blocks away from 0 and 255 to check"
    mean_error = np.abs(d.mean(axis=(2, 4)) - o.mean(axis=(2, 4)))[clean]
    assert mean_error.max() <= mean_bound, f"block mean off by {mean_error.max():.2f} > {mean_bound:.2f}"
    rms = np.sqrt(((d - o) ** 2).mean(axis=(2, 4)))
    assert rms.max() <= rms_bound, f"block RMS error {rms.max():.2f} > {rms_bound:.2f}"


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
