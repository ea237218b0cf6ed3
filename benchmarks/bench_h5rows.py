"""Reading chosen rows of a bag: h5py's fancy indexing against `pathology.h5rows.read_rows`.

    python benchmarks/bench_h5rows.py

Two reads the toolkit makes: the top/bottom patches of a heatmap montage (12 of a bag's
stored patches, one chunk per patch) and a training subset of instance features
(`mil train --max-instances 2048` on a 5,000 × 1,024 float16 bag, chunks of 1,024 rows).
Files in the page cache; best of 7.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section

from pathology.h5rows import read_rows

REPEATS = 7


def best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    cases = [("montage: 12 of 1,200 stored 256-px patches", (1200, 256, 256, 3), np.uint8, (1, 256, 256, 3), 12),
             ("features: 2,048 of 5,000 rows × 1,024", (5000, 1024), np.float16, (1024, 1024), 2048)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, shape, dtype, chunks, k in cases:
            path = Path(folder) / "bag.h5"
            with h5py.File(path, "w") as f:
                ds = f.create_dataset("x", shape=shape, dtype=dtype, chunks=chunks)
                for lo in range(0, shape[0], 256):
                    ds[lo:lo + 256] = rng.integers(0, 255, (min(256, shape[0] - lo), *shape[1:])).astype(dtype)
            pick = np.sort(rng.choice(shape[0], k, replace=False))
            with h5py.File(path) as f:
                ds = f["x"]
                assert np.array_equal(ds[pick], read_rows(ds, pick))
                fancy = best(lambda ds=ds, pick=pick: ds[pick])
                ours = best(lambda ds=ds, pick=pick: read_rows(ds, pick))
            rows.append([name, f"{1000 * fancy:.1f}", f"{1000 * ours:.1f}", f"{fancy / ours:.0f}×"])
            print(rows[-1], flush=True)
    table = markdown_table(["read", "h5py `ds[rows]`, ms", "`read_rows`, ms", "speed-up"], rows)
    print(table)
    write_section("bench_h5rows.py", f"Machine: {machine()}. Files in the page cache, best of {REPEATS}; the "
                  f"results are checked equal.\n\n{table}")


if __name__ == "__main__":
    main()
