"""IHC scoring speed and memory: cells per second, seconds per mm² of tissue, peak RSS.

    python benchmarks/bench_ihc.py [--quick]

A synthetic IHC slide (recipe ``ihc-nuclear``: tumour nuclei DAB-positive among stroma, three
tissue pieces on glass, 0.5 µm/px; 12288×8192 px, i.e. 6×4 mm; 6144×4096 with ``--quick``) is
scored by ``score_slide`` in a fresh process per run, as ``pathology ihc`` does, with all the
machine's cores for the patch reader: Ki-67 (nuclei, classes, hotspot) and HER2 (nuclei grown
into cells, membranes). Tissue is what was scored (``scored_mm2`` of the result). Best of
three runs; peak memory is the scoring process's max RSS. ``--quick`` prints only and does not
update RESULTS.md. Run it on a quiet machine: the section records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section

WORK = Path(__file__).resolve().parent.parent / "bench_tmp"
REPEATS = 3

SNIPPET = """
import json, resource, sys, time
from pathology.cores import available_cores
from pathology.ihc import IHCOptions, score_slide
t = time.perf_counter()
o = score_slide(sys.argv[1], "bench", sys.argv[2], IHCOptions(marker=sys.argv[3]), threads=available_cores())
seconds = time.perf_counter() - t
r = json.load(open(sys.argv[2] + "/bench.json"))
print(json.dumps({"seconds": seconds, "status": o.status, "tiles": r["tiles"], "cells": r["cells"],
                  "mm2": r["scored_mm2"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def synthetic_slide(width: int, height: int) -> Path:
    """The benchmark slide, generated once and cached in bench_tmp/."""
    from pathology.synth import SynthConfig, write_synthetic_slide

    path = WORK / f"ihc_nuclear_{width}x{height}.svs"
    if not path.exists():
        WORK.mkdir(exist_ok=True)
        t = time.perf_counter()
        write_synthetic_slide(path, SynthConfig(width=width, height=height, mpp=0.5, seed=7, recipe="ihc-nuclear",
                                                tumor_fraction=0.4))
        print(f"generated {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def run(slide: Path, marker: str, repeats: int) -> dict:
    runs = []
    out = WORK / f"ihc_{marker}"
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-c", SNIPPET, str(slide), str(out), marker], capture_output=True,
                              text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    shutil.rmtree(out, ignore_errors=True)
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter-size slide, one run; prints only")
    args = parser.parse_args()
    size = (6144, 4096) if args.quick else (12288, 8192)
    repeats = 1 if args.quick else REPEATS
    load = os.getloadavg()
    slide = synthetic_slide(*size)
    rows = []
    for marker in ("ki67", "her2"):
        r = run(slide, marker, repeats)
        assert r["status"] == "done", r
        rows.append([marker, f"{size[0]}×{size[1]}", r["tiles"], r["cells"], f"{r['mm2']:.2f}", f"{r['seconds']:.1f}",
                     f"{r['cells'] / r['seconds']:.0f}", f"{r['seconds'] / r['mm2']:.1f}", f"{r['rss_mb']:.0f}"])
        print(rows[-1], flush=True)
    table = markdown_table(["marker", "slide (px, 0.5 µm/px)", "working tiles", "cells", "tissue mm²", "seconds",
                            "cells/s", "s per mm²", "peak RSS MB"], rows)
    print(table)
    print(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.quick:
        print("(quick run: RESULTS.md not updated)")
        return
    write_section("bench_ihc.py", f"Machine: {machine()}; load average at the start {load[0]:.2f} / {load[1]:.2f} / "
                  f"{load[2]:.2f} (1 / 5 / 15 min). `score_slide` on a synthetic `ihc-nuclear` slide in a fresh "
                  f"process, best of {repeats}, the patch reader on every core; 512-px working tiles at "
                  f"0.5 µm/px with 40 px of context.\n\n{table}")


if __name__ == "__main__":
    main()
