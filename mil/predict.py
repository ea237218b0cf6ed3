"""Apply a trained run (every fold model of ``mil train``) to bags: scores per task and
per-instance attention, averaged over the fold models.

Shared by ``mil predict``, ``pathology run`` and ``pathology heatmap --model``:

    run = load_run("runs/er")                  # config.json (RunConfig) + fold_<k>/model.safetensors
    scores, attention = predict_bag(run, x)    # x: (N, in_dim) features of one bag

A binary task's score is the mean of the fold models' probabilities; a multi-class task's
the mean of their class probabilities (a tuple; the call is the most probable class); a
regression task's the mean of their values; a survival task's the mean of their risks
(higher = worse). Attention is the mean of the fold models' per-instance attention, in the
bag's row order (the order of its ``/coords``); a multi-class task also has one map per
class (``<task>=<class>``, where the model gives them: :class:`mil.models.MILOutput`).

A run trained with clinical covariates needs each case's values (``covariates``: column ->
value); each fold model encodes them with its own fold's fitted encoding. A patient-level run
predicts one bag pooling all of a patient's slides (:func:`predict_files`).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from rich.console import Console
from safetensors.torch import load_model

from pathology import __version__
from pathology.batch import Outcome, run_batch, status_path
from pathology.inputs import SlideInput
from pathology.publish import publishing
from pathology.table import read_table

from . import covariates as C
from .assess import COLUMNS, assess_slide, warning_counts
from .calibration import calibrated
from .data import BAG_SUFFIXES, CLAM_SUBDIRS, BagError, find_bag, read_features
from .labels import LabelSpec
from .manifest import Cohort, load_manifest
from .models import Head, MILModel, create_model
from .runconfig import CONFIG_NAME, RunConfig, RunError
from .runfolder import prediction_columns, prediction_record, write_csv
from .tasks import KINDS, Fitted, HeadOptions, Score
from .train import autocast, resolve_device

log = logging.getLogger(__name__)

TRUST_FILE = "trust.csv"  # each slide's assessment (mil.assess): reliable, out of distribution, why

WEIGHTS = "model.safetensors"


@dataclass
class Run:
    """A trained run ready to predict: its config and one eval-mode model per fold (in the
    config's fold order)."""

    path: Path
    config: RunConfig
    models: list[MILModel]
    device: torch.device

    @property
    def heads(self) -> list[Head]:
        return [Head(h.name, h.n_outputs) for h in self.config.heads]

    @property
    def kinds(self) -> dict[str, str]:
        """task -> "binary" | "multiclass" | "regression" | "survival"."""
        return self.config.kinds

    @property
    def covariates(self) -> tuple[str, ...]:
        """The clinical covariate columns the fold models need."""
        return self.config.covariates

    @property
    def level(self) -> str:
        return self.config.level

    @property
    def options(self) -> HeadOptions:
        return HeadOptions(survival_loss=self.survival_loss, survival_bins=max(
            [h.n_outputs for h in self.config.heads if h.kind == "survival"] or [1]))

    def fitted(self, fold: int, task: str) -> Fitted:
        """What scoring fold ``fold``'s model needs for ``task`` (a regression target's scaling)."""
        mean, sd = self.config.folds[fold].targets.get(task, (0.0, 1.0))
        return Fitted(mean=mean, sd=sd)

    @property
    def features(self) -> str | None:
        """The feature set the models were trained on."""
        return self.config.features

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def survival_loss(self) -> str:
        return self.config.survival_loss


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Read ``config.json`` (:meth:`RunConfig.read`) and every ``fold_<k>/model.safetensors`` of a
    run (safetensors only, never pickle) and rebuild the fold models in eval mode; raises
    :class:`RunError`."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_NAME
    if not config_path.is_file():
        raise RunError(f"{run_dir}: not a run folder (no config.json); give the --out folder of `mil train`")
    config = RunConfig.read(config_path)
    spec = config.model
    heads = [Head(h.name, h.n_outputs) for h in config.heads]
    target = resolve_device(device)
    models = []
    for fold in config.folds:
        path = run_dir / f"fold_{fold.fold}" / WEIGHTS
        if not path.is_file():
            raise RunError(f"{path}: missing (config.json lists fold {fold.fold}); the run is incomplete")
        model = create_model(spec.name, config.in_dim, heads, hidden=spec.hidden, dropout=spec.dropout,
                             n_covariates=C.width(fold.covariates), **spec.kwargs)
        try:
            load_model(model, str(path), strict=True)
        except Exception as exc:  # noqa: BLE001 - any failure means these weights do not fit this config
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RunError(f"{path}: weights do not match config.json's model ({first})") from None
        models.append(calibrated(model, config.calibration, fold.fold).to(target).eval())
    log.info("%s: %s, %d fold model(s), tasks %s, features %s (dim %d)", run_dir, spec.name, len(models),
             ", ".join(config.kinds), config.features, config.in_dim)
    return Run(run_dir, config, models, target)


@torch.inference_mode()
def predict_bag(run: Run, x: torch.Tensor | np.ndarray, covariates: dict[str, object] | None = None
                ) -> tuple[dict[str, Score], dict[str, np.ndarray]]:
    """Scores (task -> probability, class probabilities, value or risk) and attention (map name ->
    float32 (N,)) of one bag ``x`` (N, in_dim), each the mean over the run's fold models.
    ``covariates`` (column -> value, missing = NaN or "") is required when the run uses them."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() != 2 or x.shape[1] != run.in_dim:
        raise ValueError(f"features of shape {tuple(x.shape)}; the model expects (N, {run.in_dim})")
    x = x.to(run.device)
    encoded = _encode_covariates(run, covariates)
    sums: dict[str, np.ndarray] = {}
    attention: dict[str, torch.Tensor] = {}
    n = len(run.models)
    for i, model in enumerate(run.models):
        with autocast(run.device):
            out = model(x, None, None if encoded is None else encoded[i].to(run.device))
        for name, kind in run.kinds.items():
            score = np.atleast_1d(np.asarray(KINDS[kind].score(out.logits[name].float(), run.fitted(i, name),
                                                                run.options), np.float64))
            sums[name] = sums.get(name, 0.0) + score / n
            maps = {name: out.attention[name]}
            if kind == "multiclass" and name in out.class_attention:
                head = run.config.head(name)
                maps.update({class_map(name, c): out.class_attention[name][:, k] for k, c in enumerate(head.classes)})
            for key, value in maps.items():
                attention[key] = attention.get(key, 0.0) + value.detach().double().cpu() / n
    scores: dict[str, Score] = {name: tuple(map(float, v)) if run.kinds[name] == "multiclass" else float(v[0])
                                for name, v in sums.items()}
    return scores, {name: a.to(torch.float32).numpy() for name, a in attention.items()}


def class_map(task: str, cls: str) -> str:
    """The attention map of one class of a multi-class task (an HDF5 name: no ``/``)."""
    return f"{task}={cls.replace('/', '_')}"


def _encode_covariates(run: Run, covariates: dict[str, object] | None) -> list[torch.Tensor] | None:
    """Per fold model, the case's covariates encoded with the fold's encoding (None without covariates)."""
    if not run.covariates:
        return None
    if covariates is None:
        raise RunError(f"{run.path}: the run uses clinical covariates ({', '.join(run.covariates)}); give each "
                       "case's values (mil predict --manifest, pathology run --clinical)")
    values = {}
    for fold in run.config.folds:
        for fit in fold.covariates:
            raw = covariates.get(fit.name)
            if fit.kind == "numeric":
                values[fit.name] = np.array([_as_number(raw, fit.name)])
            else:
                values[fit.name] = np.array(["" if raw is None or (isinstance(raw, float) and math.isnan(raw))
                                             else str(raw)], object)
    return [torch.from_numpy(C.encode(fold.covariates, values)[0]) for fold in run.config.folds]


def _as_number(raw: object, name: str) -> float:
    if raw is None or raw == "":
        return math.nan
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise RunError(f"covariate {name!r}: {raw!r} is not a number (the run was trained on numbers)") from None


def bag_files(bags_dir: str | Path) -> dict[str, Path]:
    """slide_id -> bag of every bag file in ``bags_dir`` (also CLAM's ``h5_files``/``pt_files``),
    chosen per slide in :func:`mil.data.find_bag`'s order."""
    bags_dir = Path(bags_dir)
    stems = set()
    for suffix in BAG_SUFFIXES:
        for folder in (bags_dir, bags_dir / CLAM_SUBDIRS[suffix]):
            stems.update(p.stem for p in folder.glob(f"*{suffix}") if p.is_file() and not p.name.startswith("."))
    return {stem: find_bag(bags_dir, stem) for stem in sorted(stems)}


def check_bag(run: Run, path: Path, features: str | None) -> None:
    """A bag whose encoder weights differ from the ones the run was trained on is refused."""
    attrs = run.config.feature_attrs
    trained = attrs.weights_sha256 if attrs is not None else None
    if not trained or path.suffix != ".h5":
        return
    with h5py.File(path, "r") as f:
        ds = f.get(f"features/{features}")
        sha = ds.attrs.get("weights_sha256") if isinstance(ds, h5py.Dataset) else None
    sha = sha.decode() if isinstance(sha, bytes) else sha
    if sha and sha != trained:
        raise BagError(f"{path}: features {features!r} come from encoder weights {sha[:12]}…, "
                       f"the model was trained on {trained[:12]}…")


def predict_file(run: Run, slide_id: str, path: Path | list[Path], out_dir: Path, features: str | None = None,
                 covariates: dict[str, object] | None = None) -> tuple[dict[str, Score], int]:
    """Predict one bag file (or one patient's, pooled) and write ``out_dir/attention/<slide_id>.h5``
    (per slide of a patient); returns (scores, N).

    ``features`` picks the bag's feature set (default: the run's); a bag with another
    dimension than the run's is a :class:`BagError` naming the bag."""
    paths = path if isinstance(path, list) else [path]
    name = features or run.features
    bags = []
    for p in paths:
        bag = read_features(p, name)
        if bag.features.shape[1] != run.in_dim:
            raise BagError(f"{p}: features {bag.name!r} have dimension {bag.features.shape[1]}, the model "
                           f"expects {run.in_dim}")
        check_bag(run, p, bag.name)
        bags.append(bag)
    x = np.concatenate([b.features for b in bags]) if len(bags) > 1 else bags[0].features
    scores, attention = predict_bag(run, x, covariates)
    start = 0
    for p, bag in zip(paths, bags):
        part = {k: v[start:start + len(bag.features)] for k, v in attention.items()}
        start += len(bag.features)
        sid = slide_id if len(paths) == 1 else p.stem
        write_attention(out_dir / "attention" / f"{sid}.h5", sid, bag.coords, part, run, bag.name)
    return scores, len(x)


def write_attention(path: Path, slide_id: str, coords: np.ndarray | None, attention: dict[str, np.ndarray],
                    run: Run, features: str) -> None:
    """``coords`` (N, 2, when known) and ``attention/<task>`` (N,) float32, written atomically."""
    with publishing(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(slide_id=slide_id, run=str(run.path.resolve()), model=run.config.model.name,
                       features=features, trained_features=run.features or "", n_folds=len(run.models),
                       software_version=__version__)
        if coords is not None:
            f.create_dataset("coords", data=coords.astype(np.int64))
        for task, values in attention.items():
            ds = f.create_dataset(f"attention/{task}", data=values.astype(np.float32))
            ds.attrs["kind"] = run.kinds.get(task, "class")


def prediction_records(run: Run, slide_id: str, patient_id: str, scores: dict[str, Score],
                       labels: dict[str, object]) -> list[dict]:
    """``predictions.csv`` rows of one case (fold empty); ``labels``: task -> its label as
    :meth:`mil.manifest.Cohort.labels` gives it (unknown when absent)."""
    rows = []
    for head in run.config.heads:
        label = labels.get(head.name, (math.nan, math.nan) if head.kind == "survival" else math.nan)
        rows.append(prediction_record(head, slide_id, patient_id, None, label, scores[head.name]))
    return rows


def load_labels(run: Run, manifest: str | Path) -> Cohort:
    """The manifest as a cohort whose tasks are the run's tasks with label columns in it, read
    with the run's kinds and classes (a manifest without label columns just names the slides
    and patients), and the run's covariates, which it must have."""
    columns = set(read_table(manifest, []).columns)  # its problems are reported by load_manifest
    targets, survival, fixed = [], None, {}
    for head in run.config.heads:
        if head.columns and all(c in columns for c in head.columns):
            if head.kind == "survival":
                survival = head.columns
            else:
                targets.append(head.columns[0])
                fixed[head.columns[0]] = LabelSpec(head.kind, head.classes)
    return load_manifest(manifest, targets=targets, survival=survival, fixed=fixed, covariates=run.covariates)


def case_covariates(run: Run, table: str | Path) -> dict[str, dict[str, object]]:
    """slide_id -> the run's covariate values, from a table with ``slide_id`` and the covariate
    columns (a manifest; every problem reported at once, as for training)."""
    cohort = load_manifest(table, covariates=run.covariates)
    return {str(sid): _covariates_of(cohort, row) or {} for row, sid in enumerate(cohort.table["slide_id"])}


def _labels_of(cohort: Cohort, row: int) -> dict[str, object]:
    return {task.name: cohort.labels(task.name)[row] for task in cohort.tasks}


def _covariates_of(cohort: Cohort, row: int) -> dict[str, object] | None:
    if not cohort.covariates:
        return None
    return {c.name: cohort.covariate_values(c)[row] for c in cohort.covariates}


def _job(slide: SlideInput, advance, *, run: Run, out_dir: Path, features: str | None, cases: dict[str, dict],
         rows: list[dict], trust_rows: list[dict]) -> Outcome:
    t0 = time.perf_counter()
    case = cases.get(slide.slide_id, {})
    paths = case.get("paths", slide.path)
    scores, n = predict_file(run, slide.slide_id, paths, out_dir, features, case.get("covariates"))
    rows += prediction_records(run, slide.slide_id, case.get("patient", ""), scores, case.get("labels", {}))
    for path in paths if isinstance(paths, list) else [paths]:  # a patient's slides are each judged
        trust = assess_slide(run, path, features)
        sid = slide.slide_id if not isinstance(paths, list) else path.stem
        trust_rows.append({"slide_id": sid, "patient_id": case.get("patient", ""), **trust.columns(),
                           "_warnings": trust.warnings})
    advance(n)
    detail = ", ".join(f"{t} {_describe(run, t, v)}" for t, v in scores.items())
    return Outcome(slide.slide_id, "done", n, time.perf_counter() - t0, detail)


def _describe(run: Run, task: str, score: Score) -> str:
    if isinstance(score, tuple):
        return str(run.config.head(task).classes[int(np.argmax(score))])
    return f"{score:.3f}"


def predict_cohort(run: Run, bags_dir: str | Path, out_dir: str | Path, *, manifest: str | Path | None = None,
                   features: str | None = None, console: Console | None = None) -> list[Outcome]:
    """Predict every slide of ``manifest`` (or every bag file in ``bags_dir``) and write
    ``out_dir/predictions.csv``, ``out_dir/attention/<slide_id>.h5`` and ``out_dir/trust.csv``
    (each slide's :func:`mil.assess.assess_slide`; its warnings are logged, counted).

    A bad or missing bag is a failed outcome; the others go on. ``predictions.csv`` holds the
    cases that succeeded, with labels from the manifest's columns when it has them. A run with
    covariates needs the manifest (its covariate columns); a patient-level run predicts one
    row per patient, pooling the patient's slides (each bag its own patient without a manifest)."""
    bags_dir, out_dir = Path(bags_dir), Path(out_dir)
    if not bags_dir.is_dir():
        raise RunError(f"{bags_dir}: bags folder not found")
    if run.covariates and manifest is None:
        raise RunError(f"{run.path}: the run uses clinical covariates ({', '.join(run.covariates)}); give a "
                       "--manifest with those columns")
    cases: dict[str, dict] = {}
    if manifest is not None:
        cohort = load_labels(run, manifest)
        table = cohort.table
        paths = [find_bag(bags_dir, sid) or bags_dir / f"{sid}.h5" for sid in table["slide_id"]]  # missing: fails
        if run.level == "patient":
            slide_paths = dict(zip(table["slide_id"], paths))
            cohort = cohort.by_patient()
            table = cohort.table
            for row, pid in enumerate(table["slide_id"]):
                cases[pid] = {"paths": [slide_paths[s] for s in table.at[row, "slides"]], "patient": pid,
                              "labels": _labels_of(cohort, row), "covariates": _covariates_of(cohort, row)}
        else:
            for row, sid in enumerate(table["slide_id"]):
                cases[sid] = {"paths": paths[row], "patient": table.at[row, "patient_id"],
                              "labels": _labels_of(cohort, row), "covariates": _covariates_of(cohort, row)}
        slides = [SlideInput(cid, case["paths"][0] if isinstance(case["paths"], list) else case["paths"])
                  for cid, case in cases.items()]
    else:
        slides = [SlideInput(s, p) for s, p in bag_files(bags_dir).items()]
        if not slides:
            raise RunError(f"{bags_dir}: no bag files (.h5, .pt)")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    trust_rows: list[dict] = []
    job = functools.partial(_job, run=run, out_dir=out_dir, features=features, cases=cases, rows=rows,
                            trust_rows=trust_rows)
    outcomes = run_batch(slides, job, unit="instances", console=console, status=status_path(out_dir))
    order = {s.slide_id: i for i, s in enumerate(slides)}
    rows.sort(key=lambda r: order[r["slide_id"]])
    write_csv(pd.DataFrame(rows, columns=prediction_columns(run.config.heads)), out_dir / "predictions.csv")
    trust_rows.sort(key=lambda r: order.get(r["slide_id"], order.get(r["patient_id"], 0)))
    write_csv(pd.DataFrame(trust_rows, columns=["slide_id", "patient_id", *COLUMNS]), out_dir / TRUST_FILE)
    for line in warning_counts([r["_warnings"] for r in trust_rows]):
        log.warning("%s: see %s", line, out_dir / TRUST_FILE)
    return outcomes
