"""The same tiling batch on the local executor and on Ray, whole commands, start-up included.

    python benchmarks/bench_ray.py [--quick]

Eight synthetic slides of 20000×15000 px at 0.25 µm/px (4 with ``--quick``, which prints only
and does not update RESULTS.md), tiled at 0.5 µm/px with Macenko normalization by the real
``pathology tile`` console script: ``--executor local`` (slides one after another, all cores
decoding each) and ``--executor ray`` (a local Ray instance started by the command, one task of
``--cpus-per-slide`` CPUs per slide). The goal on one machine: Ray within 15% of local, so the
cluster path costs nothing here. Runs are interleaved, best of 3 (1 with ``--quick``); the
output folder is emptied before each run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section

from pathology.synth import SynthConfig, write_synthetic_slide

PATHOLOGY = str(Path(sys.executable).with_name("pathology"))


def tile(slides: Path, out: Path, *extra: str) -> float:
    """Wall time of one whole `pathology tile` command (a fresh output folder)."""
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([PATHOLOGY, "tile", str(slides), "--out", str(out), "--stain", "macenko", "-q", *extra],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 slides, one run each; prints only")
    args = parser.parse_args()
    n, repeats = (4, 1) if args.quick else (8, 3)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    variants = {"local": (), f"ray, --cpus-per-slide {cores}": ("--executor", "ray", "--cpus-per-slide", str(cores)),
                "ray, --cpus-per-slide 1": ("--executor", "ray", "--cpus-per-slide", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        slides = Path(tmp) / "slides"
        for i in range(n):
            write_synthetic_slide(slides / f"s{i}.svs", SynthConfig(width=20000, height=15000, mpp=0.25, seed=i))
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, extra in variants.items():
                times[name].append(tile(slides, Path(tmp) / "bags", *extra))
    local = min(times["local"])
    rows = [[name, f"{min(t):.1f}", f"{min(t) / local:.2f}×"] for name, t in times.items()]
    table = markdown_table(["executor", f"{n} slides, seconds (best of {repeats})", "vs. local"], rows)
    print(table)
    load = os.getloadavg()[0]
    if not args.quick:
        write_section("bench_ray.py", f"""Machine: {machine()}, load average {load:.1f} at the end of the run.
{n} synthetic slides of 20000×15000 px at 0.25 µm/px, `pathology tile --stain macenko` to 0.5 µm/px, whole
commands (interpreter and, for Ray, the local instance's start-up included); interleaved, best of {repeats}.

{table}
""")


if __name__ == "__main__":
    main()
