"""MIL training speed and memory: seconds per training epoch and peak RSS per model of the
registry, on 500 bags x 5,000 instances x 1,024-d float16 features (a UNI-sized cohort).

    python benchmarks/bench_mil.py [--quick] [--timed-bags N] [--models abmil,transmil]

Each model trains in a fresh process (so its peak RSS is its own) through ``mil.train``'s
epoch loop: one bag per forward pass, AdamW, gradients accumulated over 8 bags, deterministic
algorithms on, as ``mil train`` runs. One optimizer step of warm-up, then ``--timed-bags``
bags are timed and the epoch time is scaled linearly to the whole cohort (the output says
so whenever fewer bags than the cohort are timed). A "read only" row times reading the same
bags without a model. The bags are generated once into bench_tmp/ (~5 GB) and stay in the
OS page cache on a machine with enough RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section

WORK = Path(__file__).resolve().parent.parent / "bench_tmp"
ENCODER = "bench-enc"
WARMUP_BAGS = 8  # one optimizer step (batch_size 8) before timing
READ_ONLY = "read only"


def make_cohort(n_bags: int, n_instances: int, dim: int) -> Path:
    """Bags (pathology-bag/1 layout, float16 features chunked as `pathology embed` writes them)
    and a manifest; generated once, reused while complete."""
    folder = WORK / f"mil_{n_bags}x{n_instances}x{dim}"
    manifest = folder / "manifest.csv"
    if manifest.exists():
        return manifest
    bags = folder / "bags"
    bags.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    lines = ["slide_id,patient_id,er"]
    for i in range(n_bags):
        rng = np.random.default_rng(i)
        x = rng.standard_normal((n_instances, dim), dtype=np.float32).astype(np.float16)
        coords = np.stack([np.arange(n_instances) % 100, np.arange(n_instances) // 100], 1).astype(np.int64) * 256
        path = bags / f"S{i:04d}.h5"
        tmp = path.with_suffix(".h5.partial")
        with h5py.File(tmp, "w") as f:
            f.attrs.update(schema="pathology-bag/1", slide_id=path.stem, patch_size=256, target_mpp=0.5)
            f.create_dataset("coords", data=coords)
            ds = f.create_dataset(f"features/{ENCODER}", data=x, chunks=(min(n_instances, 1024), dim))
            ds.attrs.update(encoder=ENCODER, dim=dim)
        os.replace(tmp, path)
        lines.append(f"{path.stem},P{i:04d},{i % 2}")
    manifest.write_text("\n".join(lines) + "\n")
    print(f"generated {n_bags} bags in {folder} in {time.perf_counter() - t:.0f} s", flush=True)
    return manifest


def worker(model_name: str, manifest: Path, n_timed: int, threads: int, max_instances: int | None) -> dict:
    """Time one training epoch over ``n_timed`` bags (after a warm-up step) in this process."""
    import torch

    from mil.data import BagDataset
    from mil.manifest import load_manifest
    from mil.models import Head, create_model
    from mil.train import Objective, TrainConfig, deterministic, run_epoch

    torch.set_num_threads(threads)
    cohort = load_manifest(manifest, targets=("er",), bags_dir=manifest.parent / "bags", features=ENCODER)
    warm = np.arange(WARMUP_BAGS)
    timed = np.arange(WARMUP_BAGS, WARMUP_BAGS + n_timed)
    dataset = BagDataset(cohort, None, features=ENCODER, max_instances=max_instances)
    if model_name == READ_ONLY:
        t = time.perf_counter()
        for row in timed:
            dataset[int(row)]
        seconds, params = time.perf_counter() - t, 0
    else:
        config = TrainConfig(model=model_name, targets=("er",), max_instances=max_instances)
        torch.manual_seed(0)
        model = create_model(model_name, dataset.dim, [Head("er", 1)], hidden=config.hidden, dropout=config.dropout)
        params = sum(p.numel() for p in model.parameters())
        objective = Objective(cohort, config, np.arange(len(cohort.table)))
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        cpu = torch.device("cpu")
        rng = np.random.default_rng(0)
        with deterministic(cpu):
            run_epoch(model, dataset, warm, objective, optimizer, config, cpu, rng)
            t = time.perf_counter()
            run_epoch(model, dataset, timed, objective, optimizer, config, cpu, rng)
            seconds = time.perf_counter() - t
    return {"model": model_name, "seconds": seconds, "bags": int(n_timed), "params": int(params),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_worker(model_name: str, manifest: Path, n_timed: int, threads: int, max_instances: int | None) -> dict:
    """:func:`worker` in a fresh Python process (its own peak RSS)."""
    cmd = [sys.executable, __file__, "--worker", model_name, "--manifest", str(manifest), "--timed-bags",
           str(n_timed), "--threads", str(threads)]
    if max_instances:
        cmd += ["--max-instances", str(max_instances)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (16 bags x 300 x 64); prints only, "
                                                             "does not touch RESULTS.md")
    parser.add_argument("--bags", type=int, default=500)
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--timed-bags", type=int, default=100, help="bags timed per model (epoch time scaled "
                                                                    "linearly to --bags)")
    parser.add_argument("--models", default="", help="comma-separated (default: every registered model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-instances", type=int, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.manifest, args.timed_bags, args.threads, args.max_instances)))
        return
    if args.quick:
        args.bags, args.instances, args.dim, args.timed_bags = 16, 300, 64, 8
    n_timed = min(args.timed_bags, args.bags - WARMUP_BAGS)
    if n_timed < 1:
        parser.error(f"--bags must exceed the {WARMUP_BAGS} warm-up bags")
    from mil.models import MODELS

    models = [m for m in args.models.split(",") if m] or sorted(MODELS)
    manifest = make_cohort(args.bags, args.instances, args.dim)
    scale = args.bags / n_timed
    rows = []
    for name in [READ_ONLY, *models]:
        r = run_worker(name, manifest, n_timed, args.threads, args.max_instances)
        per_bag = r["seconds"] / r["bags"]
        rows.append([name, f"{r['params'] / 1e6:.2f}" if r["params"] else "", f"{1000 * per_bag:.0f}",
                     _seconds(r["seconds"] * scale), f"{r['rss_mb']:.0f}"])
        print(rows[-1], flush=True)
    header = ["model", "parameters (M)", "ms per bag", f"s per epoch ({args.bags} bags)", "peak RSS (MB)"]
    table = markdown_table(header, rows)
    subset = (f"Timed on {n_timed} of the {args.bags} bags (after {WARMUP_BAGS} warm-up bags) and scaled "
              f"linearly to {args.bags}." if n_timed < args.bags else f"All {args.bags} bags timed.")
    body = f"""Machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the end; CPU only, {args.threads} threads.
Cohort: {args.bags} bags x {args.instances:,} instances x {args.dim}-d float16 features in HDF5 (chunked as
`pathology embed` writes them, in the page cache), `max_instances` {args.max_instances or 'off'}. One training epoch
as `mil train` runs it: one bag per forward pass, backward, AdamW step every 8 bags, hidden 256,
deterministic algorithms. {subset} "read only" reads the same bags without a model; peak RSS is
each model's own process (Python + torch included).

{table}"""
    print(body)
    if args.quick:
        print("(quick smoke run: RESULTS.md not updated)")
    else:
        write_section("bench_mil.py", body)


if __name__ == "__main__":
    main()
