"""The nuclei overlay of `pathology view`: reading a whole slide's cells table, and drawing its tiles.

    python benchmarks/bench_view_nuclei.py [--quick] [--workdir DIR]

A cells table as `pathology ihc` writes it (x, y, class, dab_od, area_um2) for a 100000×80000 px
slide at 0.25 µm/px: nuclei 10 µm apart (jittered) in five elliptical tissue pieces, about 2.2
million (0.55 million with ``--quick``, which prints only and does not update RESULTS.md).
Measured: reading and indexing the table once (what the first look at a slide's nuclei costs),
the memory it then holds, and per DeepZoom level the time to draw one overlay tile and encode it
as PNG (no cache: every tile drawn afresh), over a 1280×800 screen's worth of tiles (up to 6×4)
on tissue. The load average is printed and recorded: on a busy machine the numbers are slower.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section

from pathology.view.deepzoom import OVERLAP, TILE_SIZE, TileRegion
from pathology.view.nuclei import DOTS_FROM, RING_FROM, read_nuclei, tile_png

WIDTH, HEIGHT, MPP = 100_000, 80_000, 0.25
SCREEN = (6, 4)            # tiles of a 1280×800 screen


def write_table(path: Path, spacing_um: float, seed: int = 0) -> int:
    """Nuclei on a jittered grid inside five tissue ellipses; classes 55 / 20 / 15 / 10 %."""
    rng = np.random.default_rng(seed)
    step = spacing_um / MPP
    gx, gy = np.meshgrid(np.arange(step / 2, WIDTH, step), np.arange(step / 2, HEIGHT, step))
    x, y = gx.ravel() + rng.normal(0, step / 6, gx.size), gy.ravel() + rng.normal(0, step / 6, gx.size)
    inside = np.zeros(x.size, bool)
    for cx, cy, rx, ry in ((25e3, 25e3, 18e3, 15e3), (70e3, 22e3, 20e3, 13e3), (30e3, 60e3, 16e3, 14e3),
                           (72e3, 60e3, 17e3, 15e3), (50e3, 42e3, 9e3, 8e3)):
        inside |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    x, y = x[inside], y[inside]
    classes = rng.choice(4, x.size, p=(0.55, 0.2, 0.15, 0.1))
    dab = np.round(rng.uniform(0, 1, x.size), 4)
    area = np.round(rng.uniform(20, 80, x.size), 1)
    with open(path, "w") as fh:
        fh.write("x,y,class,dab_od,area_um2\n")
        fh.writelines(f"{a:.1f},{b:.1f},{k},{d},{s}\n"
                      for a, b, k, d, s in zip(x.tolist(), y.tolist(), classes.tolist(), dab.tolist(), area.tolist()))
    return int(x.size)


def screen(level: int, levels: int, rng: np.random.Generator) -> list[TileRegion]:
    """The tiles of one screen at a random place on tissue (the middle of a piece) at DeepZoom ``level``."""
    d = 2 ** (levels - 1 - level)
    zw, zh = math.ceil(WIDTH / d), math.ceil(HEIGHT / d)
    cols, rows = math.ceil(zw / TILE_SIZE), math.ceil(zh / TILE_SIZE)
    cx, cy = rng.choice([(25e3, 25e3), (70e3, 22e3), (30e3, 60e3), (72e3, 60e3)])
    c0 = max(0, min(cols - SCREEN[0], int(cx / d / TILE_SIZE) - SCREEN[0] // 2))
    r0 = max(0, min(rows - SCREEN[1], int(cy / d / TILE_SIZE) - SCREEN[1] // 2))
    regions = []
    for row in range(r0, min(rows, r0 + SCREEN[1])):
        for col in range(c0, min(cols, c0 + SCREEN[0])):
            x, y = (t * TILE_SIZE - (OVERLAP if t else 0) for t in (col, row))
            w = min(TILE_SIZE, zw - col * TILE_SIZE) + (OVERLAP if col else 0) + (OVERLAP if col < cols - 1 else 0)
            h = min(TILE_SIZE, zh - row * TILE_SIZE) + (OVERLAP if row else 0) + (OVERLAP if row < rows - 1 else 0)
            regions.append(TileRegion(x * d, y * d, float(d), (w, h)))
    return regions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the nuclei; print only")
    parser.add_argument("--workdir", type=Path, help="keep the cells table here (reused when present)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-view-nuclei-"))
    work.mkdir(parents=True, exist_ok=True)
    table = work / ("cells-quick.csv" if args.quick else "cells.csv")
    if not table.is_file():
        write_table(table, 20.0 if args.quick else 10.0)
    size_mb = table.stat().st_size / 2**20

    t0 = time.perf_counter()
    nuclei = read_nuclei(table, MPP, (WIDTH, HEIGHT))
    read_s = time.perf_counter() - t0
    levels = math.ceil(math.log2(max(WIDTH, HEIGHT))) + 1
    rng = np.random.default_rng(1)
    rows = []
    for level in range(levels - 1, -1, -1):
        d = 2 ** (levels - 1 - level)
        times, sizes = [], []
        for region in screen(level, levels, rng):
            t0 = time.perf_counter()
            sizes.append(len(tile_png(nuclei, region)))
            times.append(time.perf_counter() - t0)
        radius = nuclei.typical_radius / d
        drawn = "rings" if radius >= RING_FROM else "discs" if radius >= DOTS_FROM else "class mix"
        rows.append([level, d, drawn, len(times), f"{1000 * np.mean(times):.1f}", f"{1000 * np.max(times):.1f}",
                     f"{np.mean(sizes) / 1024:.1f}"])
    load = os.getloadavg()[0]
    table_md = markdown_table(["DeepZoom level", "level-0 px per px", "drawn as", "tiles", "ms per tile (mean)",
                               "ms per tile (max)", "PNG KiB (mean)"], rows)
    body = (f"The nuclei overlay of `pathology view` on a {WIDTH}×{HEIGHT} px slide at {MPP} µm/px with "
            f"{len(nuclei):,} nuclei (a {size_mb:.0f} MiB cells table, as `pathology ihc` writes it). Reading and "
            f"indexing the table once: **{read_s:.2f} s**, {nuclei.nbytes / 2**20:.0f} MiB held. Then each tile of a "
            "1280×800 screen on tissue, drawn and PNG-encoded afresh (the viewer keeps drawn tiles in its tile "
            f"cache):\n\n{table_md}\n\nMachine: {machine()}; load average {load:.1f} at the end.\n\n"
            "Run: `python benchmarks/bench_view_nuclei.py`.")
    print(body)
    if not args.quick:
        write_section("bench_view_nuclei.py", body)


if __name__ == "__main__":
    main()
