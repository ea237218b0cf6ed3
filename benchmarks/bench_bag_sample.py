"""Reading a training sample of a big bag against reading the whole bag (mil.data).

    python benchmarks/bench_bag_sample.py [--quick]

A bag of 100,000 instances × 1,024 float16 features (200 MB; chunks of 1,024 rows, as
`pathology embed` writes them), in the page cache: `read_features` of all of it, and
`BagDataset(max_instances=...)[0]` for samples of 4,096 and 256 instances (the row chunks
holding them are read one at a time, and only the sampled rows are converted to float32 and
checked). The test suite counts the rows read (tests/mil/test_data.py); this measures the
time. Best of 5; ``--quick`` uses 20,000 instances and 2 repeats, prints only and does not
update RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section

from mil.data import BagDataset, read_features
from mil.manifest import load_manifest

DIM = 1024


def write_big_bag(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs.update(schema="pathology-bag/1", slide_id=path.stem)
        f.create_dataset("coords", data=np.zeros((n, 2), np.int64))
        ds = f.create_dataset("features/uni", shape=(n, DIM), dtype=np.float16, chunks=(1024, DIM))
        for lo in range(0, n, 8192):
            ds[lo:lo + 8192] = rng.standard_normal((min(8192, n - lo), DIM)).astype(np.float16)


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 instances, 2 repeats; prints only")
    args = parser.parse_args()
    n, repeats = (20_000, 2) if args.quick else (100_000, 5)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_big_bag(root / "big.h5", n)
        (root / "m.csv").write_text("slide_id,patient_id,er\nbig,p1,1\n")
        cohort = load_manifest(root / "m.csv", targets=["er"], bags_dir=root)
        read_features(root / "big.h5")  # into the page cache
        full = best(lambda: read_features(root / "big.h5"), repeats)
        rows.append([f"whole bag ({n:,})", f"{1000 * full:.0f}", "1×"])
        for k in (4096, 256):
            ds = BagDataset(cohort, max_instances=k, seed=7)
            seconds = best(lambda ds=ds: ds[0], repeats)
            rows.append([f"sample of {k:,}", f"{1000 * seconds:.0f}", f"{full / seconds:.1f}× faster"])
            print(rows[-1], flush=True)
    table = markdown_table(["read", "ms", "vs whole bag"], rows)
    print(table)
    if args.quick:
        print("(quick run: RESULTS.md not updated)")
        return
    write_section("bench_bag_sample.py", f"Machine: {machine()}. A {n:,} × {DIM} float16 bag (chunks of 1,024 "
                  f"rows) in the page cache; best of {repeats}.\n\n{table}")


if __name__ == "__main__":
    main()
