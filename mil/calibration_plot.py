"""The reliability diagram of a binary task (:mod:`.calibration`): ``reliability_<task>.png``."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from pathology.publish import publish_with

from .plots import DPI, STYLE


def plot_reliability(path: str | Path, task: str, entry: dict) -> Path:
    """The reliability diagram of one task (mean score against share of positives per bin, the
    diagonal for perfect calibration, bin sizes as bars) with its ECE."""
    path = Path(path)
    bins = entry["bins"]
    with plt.rc_context(STYLE):
        fig, (ax, bars) = plt.subplots(2, 1, figsize=(5.4, 6.2), height_ratios=(3, 1), sharex=True)
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="perfect calibration")
        x = [b["mean_score"] for b in bins]
        ax.plot(x, [b["positive_rate"] for b in bins], marker="o", lw=2, color="black",
                label=f"out-of-fold (ECE {entry['ece']:.3f})")
        before = entry.get("ece_before_scaling")
        title = f"Reliability — {task}  (n = {entry['n']})"
        if before is not None:
            title += f"\nECE {before:.3f} before temperature scaling"
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="Share positive", title=title)
        ax.legend(loc="upper left", frameon=False)
        ax.grid(alpha=0.25)
        bars.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["n"] for b in bins],
                 width=[b["high"] - b["low"] for b in bins], color="0.7", edgecolor="white")
        bars.set(xlabel="Mean predicted probability (bin)", ylabel="Slides")
        fig.tight_layout()
        try:
            publish_with(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
        finally:
            plt.close(fig)
    return path
