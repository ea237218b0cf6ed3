"""Features made by CLAM or TRIDENT train here unchanged: ``/features`` (N, D) and ``/coords``
(N, 2) at the root of an .h5 per slide (CLAM puts them in ``h5_files/``), or a ``.pt`` tensor.

This script writes such files (random features with a planted signal, standing in for the
output of CLAM's ``extract_features_fp.py`` or TRIDENT's ``run_batch_of_slides.py``), a
manifest, and trains and predicts with ``mil`` exactly as it would on this project's bags.

    python examples/clam_trident_features.py [OUT]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

out = Path(sys.argv[1] if len(sys.argv) > 1 else "clam_example")
features = out / "h5_files"
features.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
rows = ["slide_id,patient_id,er"]
for i in range(30):
    er = i % 2
    x = rng.normal(size=(int(rng.integers(50, 200)), 1024)).astype(np.float32)
    x[: len(x) // 10, :8] += 2.0 * er                      # ER+ slides: a few patches carry the signal
    coords = np.stack([np.arange(len(x)) % 20 * 512, np.arange(len(x)) // 20 * 512], 1)
    with h5py.File(features / f"slide_{i:02d}.h5", "w") as f:  # CLAM/TRIDENT layout
        f["features"], f["coords"] = x, coords
    rows.append(f"slide_{i:02d},patient_{i:02d},{er}")
(out / "manifest.csv").write_text("\n".join(rows) + "\n")

mil = shutil.which("mil") or str(Path(sys.executable).with_name("mil"))   # the installed `mil` command
run = out / "run"
subprocess.run([mil, "train", "--manifest", str(out / "manifest.csv"), "--bags", str(out), "--target", "er",
                "--folds", "3", "--epochs", "20", "--out", str(run), "--overwrite"], check=True)
subprocess.run([mil, "predict", "--model", str(run), "--bags", str(out), "--out", str(out / "predictions")],
               check=True)
print((out / "predictions" / "predictions.csv").read_text()[:400])
