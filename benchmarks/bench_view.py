"""DeepZoom tile latency of `pathology view` with 20 concurrent clients, cold and warm cache.

    python benchmarks/bench_view.py [--quick] [--workdir DIR]

A synthetic slide of 40000×30000 px at 0.25 µm/px (`pathology synth`; 12000×9000 with
``--quick``, which prints only and does not update RESULTS.md) is tiled once so the folder's
bag names it, then served by the real `pathology view` command in its own process. Twenty
clients, each on one keep-alive connection as a browser tab holds, look at 6 random places
each: a random DeepZoom level among the 6 finest and a 1280×800 screen's worth of tiles there
(up to 6×4 tiles), requested one after another. Cold: the first time (tiles not in the viewer's
cache; the slide file is in the OS page cache, as it is after a first look). Warm: the same
requests again (tiles from memory). A single client looking at 6 other places first gives the
time to make a tile without queueing. Latency is per tile, from sending the request to the last
byte. The load average of the machine is printed and recorded: on a busy machine the numbers
are slower.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section

from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.tiling.pipeline import TileOptions, tile_slide

CLIENTS = 20
VIEWS = 6                 # places each client looks at
SCREEN = (1280, 800)      # pixels of one look: 6×4 tiles of 254 px
FINEST_LEVELS = 6         # looks are at one of the finest DeepZoom levels, where the tiles are


def start_viewer(folder: Path) -> tuple[subprocess.Popen, int]:
    """`pathology view FOLDER --port 0` in its own process; returns it and the port it serves on."""
    code = "from pathology.cli import app; app()"
    proc = subprocess.Popen([sys.executable, "-c", code, "view", str(folder), "--port", "0", "-q"],
                            stderr=subprocess.PIPE, text=True)
    text = ""
    while "http://" not in text:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"pathology view did not start: {text}")
        text += line
    return proc, int(re.search(r"http://[^:]+:(\d+)/", text).group(1))


def looks(width: int, height: int, seed: int) -> list[str]:
    """The tile paths of one client's looks (each a screen's worth of tiles at a random place)."""
    rng = random.Random(seed)
    top = int(np.ceil(np.log2(max(width, height))))
    paths = []
    for _ in range(VIEWS):
        level = rng.randint(top - FINEST_LEVELS + 1, top)
        scale = 2 ** (top - level)
        lw, lh = -(-width // scale), -(-height // scale)
        cols, rows = -(-lw // 254), -(-lh // 254)
        c0 = rng.randint(0, max(0, cols - SCREEN[0] // 254))
        r0 = rng.randint(0, max(0, rows - SCREEN[1] // 254))
        paths += [f"/slides/bench_files/{level}/{c}_{r}.jpeg" for r in range(r0, min(rows, r0 + 4))
                  for c in range(c0, min(cols, c0 + 6))]
    return paths


def client(port: int, paths: list[str], latencies: list[float], sizes: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    for path in paths:
        t = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        latencies.append(time.perf_counter() - t)
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}")
        sizes.append(len(body))
    conn.close()


def round_of(port: int, requests: list[list[str]]) -> dict:
    """All clients at once; latency percentiles (ms) and throughput."""
    latencies: list[list[float]] = [[] for _ in requests]
    sizes: list[list[int]] = [[] for _ in requests]
    threads = [threading.Thread(target=client, args=(port, paths, latencies[i], sizes[i]))
               for i, paths in enumerate(requests)]
    t = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t
    flat = np.array([v for per in latencies for v in per]) * 1000
    if len(flat) != sum(map(len, requests)):
        raise RuntimeError("a client failed (see its error above)")
    return {"tiles": len(flat), "p50": np.percentile(flat, 50), "p95": np.percentile(flat, 95), "max": flat.max(),
            "per_s": len(flat) / wall, "kb": np.mean([s for per in sizes for s in per]) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 12000×9000 slide; prints only")
    parser.add_argument("--workdir", type=Path, help="keep the slide and its bag here, and reuse them")
    args = parser.parse_args()
    width, height = (12000, 9000) if args.quick else (40000, 30000)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        t = time.perf_counter()
        if not (root / "out" / "bags" / "bench.h5").is_file():
            write_synthetic_slide(root / "slides" / "bench.svs", SynthConfig(width=width, height=height, seed=1),
                                  processes=os.cpu_count() or 1)
            tile_slide(root / "slides" / "bench.svs", "bench", root / "out" / "bags",
                       TileOptions(store_patches=False), threads=os.cpu_count() or 1)
            print(f"slide {width}×{height} written and tiled in {time.perf_counter() - t:.0f} s")
        requests = [looks(width, height, seed) for seed in range(CLIENTS)]
        load_before = os.getloadavg()
        proc, port = start_viewer(root / "out")
        try:
            # one client alone first (other places): the time to make a tile, without queueing
            results = {"cold, 1 client": round_of(port, [looks(width, height, CLIENTS)]),
                       f"cold, {CLIENTS} clients": round_of(port, requests),
                       f"warm, {CLIENTS} clients": round_of(port, requests)}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        load_after = os.getloadavg()
    rows = [[name, r["tiles"], f"{r['p50']:.0f}", f"{r['p95']:.0f}", f"{r['max']:.0f}", f"{r['per_s']:.0f}",
             f"{r['kb']:.0f}"] for name, r in results.items()]
    table = markdown_table(["cache", "tiles", "p50 ms", "p95 ms", "max ms", "tiles/s", "KiB/tile"], rows)
    load = (f"load average (1, 5, 15 min) before {', '.join(f'{v:.1f}' for v in load_before)}, "
            f"after {', '.join(f'{v:.1f}' for v in load_after)}")
    print(table)
    print(load)
    if args.quick:
        return
    write_section("bench_view.py", f"""
`pathology view` serving DeepZoom tiles (254 px + 1 px overlap, JPEG quality 75) of a {width}×{height} px
synthetic SVS at 0.25 µm/px to {CLIENTS} concurrent clients, each on one keep-alive connection looking at
{VIEWS} random places (a 1280×800 screen of tiles at one of the {FINEST_LEVELS} finest levels). Cold: tiles
not yet in the viewer's cache (slide file in the OS page cache); warm: the same requests again; one client
alone (other places) first, for the time to make a tile without queueing. Per-tile latency from request to
last byte. Machine: {machine()}; {load}.

{table}

Run: `python benchmarks/bench_view.py`.
""")


if __name__ == "__main__":
    main()
