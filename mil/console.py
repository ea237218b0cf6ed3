"""Training as the terminal shows it: progress bars over folds and epochs, and the metrics
table (task, metric, mean ± sd over folds, pooled value with its 95% CI)."""

from __future__ import annotations

import logging
import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .train import TrainProgress

log = logging.getLogger(__name__)


class RichProgress(TrainProgress):
    """Progress bars over folds and epochs (on the stderr console), with the losses of the last epoch."""

    def __init__(self, console: Console):
        self.bars = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[detail]}"),
                             console=console)
        self.epochs_total = 0

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def start(self, n_folds: int, epochs: int) -> None:
        self.epochs_total = epochs
        self.folds = self.bars.add_task("folds", total=n_folds, detail="")
        self.epochs = self.bars.add_task("epochs", total=epochs, detail="")

    def start_fold(self, fold: int, n_train: int, n_val: int, n_test: int) -> None:
        self.bars.reset(self.epochs, total=self.epochs_total, description=f"fold {fold} epochs",
                        detail=f"{n_train} train / {n_val} val / {n_test} test cases")

    def start_stage(self, fold: int, stage: str, epochs: int) -> None:
        self.bars.reset(self.epochs, total=epochs, description=f"fold {fold} {stage}", detail="")

    def end_epoch(self, fold: int, epoch: int, train_loss: float, val_loss: float, best: bool) -> None:
        val = f", val {val_loss:.4f}{' (best)' if best else ''}" if math.isfinite(val_loss) else ""
        self.bars.update(self.epochs, completed=epoch + 1, detail=f"loss {train_loss:.4f}{val}")

    def end_fold(self, fold: int, best_epoch: int, stopped_early: bool) -> None:
        self.bars.advance(self.folds)
        log.info("fold %d: best epoch %d%s", fold, best_epoch + 1, " (stopped early)" if stopped_early else "")


def metrics_table(tasks: dict, title: str = "Metrics") -> Table:
    """Task, metric, mean ± sd over folds, and the pooled value with its 95% CI."""
    table = Table(title=title, title_justify="left")
    for name, justify in (("task", "left"), ("metric", "left"), ("folds: mean ± sd", "right"),
                          ("pooled (95% CI)", "right")):
        table.add_column(name, justify=justify)
    for task, summary in tasks.items():
        for i, (metric, m) in enumerate(summary["metrics"].items()):
            ci = m.get("ci95") or (None, None)
            pooled = _fmt(m.get("pooled"))
            if pooled != "n/a" and all(c is not None for c in ci):
                pooled += f" ({ci[0]:.3f}–{ci[1]:.3f})"
            spread = _fmt(m.get("mean")) + (f" ± {m['sd']:.3f}" if m.get("sd") is not None else "")
            table.add_row(f"{task} (n={summary['n']})" if i == 0 else "", metric, spread, pooled)
    return table


def _fmt(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
