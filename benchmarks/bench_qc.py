"""How long the per-slide QC picture takes (pathology.qc.write_qc_image).

    python benchmarks/bench_qc.py [--quick]

Two synthetic thumbnails, an elliptic section with a pen band over a tenth of it: one of
CMU-1-Small-Region's size at 8 µm/px (185×138 px, 16-px patches: 256 px at 0.5 µm/px),
enlarged to MIN_SIDE, and a big one drawn as is (1600×2000 px, 20-px patches). The test
suite checks that the patch count adds no whole-picture passes (tests/pathology/test_qc.py);
this measures the time. Best of 5 (2 with ``--quick``, which
prints only and does not update RESULTS.md).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section

from pathology.qc import write_qc_image


def grid(mask: np.ndarray, side: int) -> np.ndarray:
    """Boxes of ``side`` px where at least half of the mask is tissue (as the tiler keeps them)."""
    h, w = mask.shape
    return np.asarray([(x, y, x + side, y + side) for y in range(0, h - side + 1, side)
                       for x in range(0, w - side + 1, side)
                       if mask[y:y + side, x:x + side].mean() >= 0.5], np.float64).reshape(-1, 4)


def scene(h: int, w: int, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Thumbnail, tissue (an ellipse), pen (a band over its left end) and the patch boxes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    tissue = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1
    pen = tissue & (xx < w / 10)
    thumb = np.where(tissue[..., None], rng.integers(150, 220, (h, w, 3)), 242).astype(np.uint8)
    return thumb, tissue, pen, grid(tissue & ~pen, side)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats; prints only")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (h, w, side) in (("small, enlarged", (138, 185, 16)), ("big, as is", (2000, 1600, 20))):
            thumb, tissue, pen, boxes = scene(h, w, side)
            path = Path(folder) / "qc.png"
            seconds = best(functools.partial(write_qc_image, path, thumb, tissue, boxes, pen_mask=pen, title=name),
                           repeats)
            rows.append([name, f"{w}×{h}", len(boxes), f"{path.stat().st_size / 1e6:.1f}", f"{seconds:.2f}"])
            print(rows[-1], flush=True)
    table = markdown_table(["thumbnail", "size (px)", "patches", "PNG (MB)", "seconds"], rows)
    print(table)
    if args.quick:
        print("(quick run: RESULTS.md not updated)")
        return
    write_section("bench_qc.py", f"Machine: {machine()}. `write_qc_image` (render + PNG), best of {repeats}.\n\n"
                  f"{table}")


if __name__ == "__main__":
    main()
