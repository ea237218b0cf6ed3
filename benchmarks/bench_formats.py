"""Tiling throughput by slide format: the same pixels as SVS, OME-TIFF and OME-Zarr.

Usage: python benchmarks/bench_formats.py [--quick] [--rounds N]

The level-0 pixels of a synthetic slide (bench_tile.py's generator, 16384x12288; --quick: 8192x6144)
are written again with the same pyramid (1, 4, 16) and 256-px tiles or chunks: as an Aperio SVS
and an OME-TIFF (JPEG tiles, read by the tiler's strict JPEG tile decoder), as OME-Zarr 0.4 with
imagecodecs' JPEG chunks, and as OME-Zarr 0.5 (zarr v3) with zstd chunks (lossless). Each is
tiled at 0.5 µm/px, 256 px, in this process with `tile_slide` (tissue, reading, QC picture,
bag; no stain normalization), and its patch reader is timed alone over the same grid; the
OME-Zarr JPEG store is also read through the backend's read_region bands (the reader before
the chunk source) to show what reading chunk by chunk brings. Best of N interleaved rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _results import machine, markdown_table, write_section
from bench_tile import WORK, synthetic_slide

DOWNSAMPLES = (1, 4, 16)


def write_formats(quick: bool) -> dict[str, Path]:
    """The same pixels in every format (written once, cached in bench_tmp/)."""
    import tifffile

    from tests.factories import write_ome_tiff, write_ome_zarr, write_pyramid_tiff

    w, h = (8192, 6144) if quick else (16384, 12288)
    folder = WORK / f"formats_{w}x{h}"
    paths = {"SVS (JPEG tiles)": folder / "s.svs", "OME-TIFF (JPEG tiles)": folder / "o.ome.tif",
             "OME-Zarr 0.4 (JPEG chunks)": folder / "zj.ome.zarr",
             "OME-Zarr 0.5 (zstd chunks)": folder / "zz.ome.zarr"}
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffFile(synthetic_slide(w, h)) as tif:
        pixels = tif.series[0].levels[0].pages[0].asarray()
    write_pyramid_tiff(paths["SVS (JPEG tiles)"], pixels, DOWNSAMPLES)
    write_ome_tiff(paths["OME-TIFF (JPEG tiles)"], pixels, DOWNSAMPLES)
    write_ome_zarr(paths["OME-Zarr 0.4 (JPEG chunks)"], pixels, DOWNSAMPLES, axes="yxc", jpeg=True)
    write_ome_zarr(paths["OME-Zarr 0.5 (zstd chunks)"], pixels, DOWNSAMPLES, version="0.5")
    return paths


def whole(path: Path, out: Path, threads: int) -> tuple[float, int]:
    from pathology.tiling.grid import GridSpec
    from pathology.tiling.pipeline import TileOptions, tile_slide

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    outcome = tile_slide(path, "s", out, TileOptions(grid=GridSpec(patch_size=256, target_mpp=0.5)), threads=threads)
    return time.perf_counter() - t, outcome.count


def reader_alone(path: Path, bag: Path, threads: int, chunks: bool = True) -> tuple[float, int, str]:
    from pathology.slide import open_slide
    from pathology.tiling.grid import Grid
    from pathology.tiling.reader import PatchReader

    with h5py.File(bag) as f, open_slide(path) as slide:
        size0 = float(np.atleast_1d(f["coords"].attrs["patch_size_level0"])[0])
        grid = Grid(f["coords"][:], f["tissue_fraction"][:], (size0, size0), (size0, size0),
                    int(f.attrs["read_level"]), len(f["coords"]))
        if not chunks:
            slide.chunk_shape = lambda level: None  # the read_region bands the tiler used before
        with PatchReader(slide, grid, int(f.attrs["patch_size"]), threads=threads) as reader:
            t = time.perf_counter()
            n = sum(len(batch) for _, batch in reader)
            return time.perf_counter() - t, n, reader.source_name


def per_chunk(path: Path, n: int = 100) -> tuple[float, float]:
    """Milliseconds per 256-px chunk of level 0, one thread: read through zarr's array slicing,
    and read from its file and decoded by the backend's direct path (ChunkFiles)."""
    from pathology.slide import open_slide

    with open_slide(path) as slide:
        array, files = slide._arrays[0], slide._files[0]
        across = slide.level_dimensions[0][0] // 256
        cells = [(i % across, i // across) for i in range(n)]
        t = time.perf_counter()
        for cx, cy in cells:
            array[cy * 256:(cy + 1) * 256, cx * 256:(cx + 1) * 256]
        through_zarr = (time.perf_counter() - t) / n * 1e3
        t = time.perf_counter()
        for cx, cy in cells:
            files.read((cy, cx, 0))
        direct = (time.perf_counter() - t) / n * 1e3
    return through_zarr, direct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from pathology.cores import available_cores

    threads = available_cores()
    load0 = os.getloadavg()[0]
    paths = write_formats(args.quick)
    sizes = {name: sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
             for name, p in paths.items()}
    runs: dict[str, list] = {name: [] for name in paths}
    reads: dict[str, list] = {name: [] for name in paths}
    reads["OME-Zarr 0.4 (JPEG chunks), read_region bands"] = []
    for _ in range(args.rounds):
        for name, path in paths.items():
            out = WORK / "formats_out" / name.split()[0]
            runs[name].append(whole(path, out, threads))
            reads[name].append(reader_alone(path, out / "s.h5", threads))
            if name.startswith("OME-Zarr 0.4"):
                reads[f"{name}, read_region bands"].append(reader_alone(path, out / "s.h5", threads, chunks=False))
    zarr_ms, direct_ms = min(per_chunk(paths["OME-Zarr 0.4 (JPEG chunks)"]) for _ in range(args.rounds))
    rows = []
    svs = min(r[0] for r in reads["SVS (JPEG tiles)"])
    for name in reads:
        base = name.split(", read_region")[0]
        read_s, n, source = min(reads[name])
        whole_s, kept = min(runs[base]) if name in runs else (None, None)
        rows.append([name, f"{sizes[base] / 1e6:.0f}", f"{whole_s:.2f}" if whole_s else "",
                     f"{kept / whole_s:.0f}" if whole_s else "", f"{read_s:.2f}", f"{n / read_s:.0f}",
                     f"{svs / read_s:.2f}", source])
    table = markdown_table(["slide", "MB", "tile_slide s", "patches/s", "reader alone s", "reader patches/s",
                            "reader speed vs SVS", "read through"], rows)
    print(table)
    w = "8192x6144" if args.quick else "16384x12288"
    body = (f"Machine: {machine()}; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after; "
            f"{threads} reader threads.\n\nThe same {w} pixels (bench_tile.py's synthetic H&E generator, "
            "0.25 µm/px, pyramid 1/4/16, 256-px tiles or chunks) in each format, tiled at 0.5 µm/px, 256 px "
            f"({min(runs['SVS (JPEG tiles)'])[1]} patches). `tile_slide` in process: tissue, "
            "reading, QC picture, bag. Best of "
            f"{args.rounds} interleaved rounds; on a loaded machine read the ratios between rows, not the "
            f"seconds.\n\n{table}\n\nOne 256-px JPEG chunk of the OME-Zarr 0.4 store, one "
            f"thread: {zarr_ms:.2f} ms through zarr's array slicing, {direct_ms:.2f} ms read from its file and "
            "decoded directly (the tiler's chunk source uses the direct path for plain layouts: zarr v2 with one "
            "compressor, zarr v3 with bytes + zstd/gzip/blosc, local stores).\n")
    write_section("bench_formats.py", body)


if __name__ == "__main__":
    main()
