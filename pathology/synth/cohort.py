"""A synthetic breast-cancer cohort whose labels show in the tissue: slides, truth and a manifest.

``make_cohort(out_dir)`` draws patients (tumour yes/no, ER, PR, HER2, tumour burden,
survival), renders each of their slides as a pyramidal SVS with the tumour's phenotype
and writes ``manifest.csv`` (docs/architecture.md, "Manifests") and ``cohort.json`` (the full truth,
including the labels the manifest leaves unknown). Every cue sits in the tumour only,
so a model must find the tumour to read it (the standard H&E recipe elsewhere):

========  ==============================================  =============================================
marker    positive                                        negative
========  ==============================================  =============================================
ER        low grade: small (r 3.4 µm), uniform, round,    high grade: large (r 5.6 µm), pleomorphic,
          paler nuclei, rarely a nucleolus                hyperchromatic nuclei, most with a nucleolus
PR        dense, even packing (8.5 µm spacing)            looser packing (11.5 µm spacing)
HER2      eosinophilic, granular tumour cytoplasm and     the standard cytoplasm, few lymphocytes
          many tumour-infiltrating lymphocytes            in the tumour
========  ==============================================  =============================================

Labels follow fixed rules (exact shares, so small cohorts stay balanced): 20 % of the
patients are tumour-free (``tumor`` 0, markers empty); of the others 65 % are ER+, PR+
only if ER+ (80 % of those), 30 % HER2+; each marker is blanked for 10 % of the tumour
patients and survival for 5 % of all patients. Each tumour patient has a burden (15-50 %
of the tissue; each slide 0.8-1.25x that). Survival (months) is exponential with a
hazard raised by ER-, HER2+ and burden (tumour-free patients: a low constant hazard),
independently censored (~30 %). Randomly chosen patients get a second slide (another
block of the same tumour, the same labels).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from ..batch import Outcome, run_batch, status_path
from ..errors import InputError
from ..inputs import SlideInput
from ..publish import publish_text
from .config import SynthConfig, derive_seed
from .recipe import RECIPES, Recipe
from .writer import truth_paths, write_synthetic_slide

SCHEMA = "pathology-synth-cohort/1"
MANIFEST_COLUMNS = ("slide_id", "patient_id", "slide_path", "tumor", "er", "pr", "her2", "os_time", "os_event")
MARKERS = ("er", "pr", "her2")

# Tumour-nucleus and tumour-cytoplasm changes per marker status (fields of NucleusKind / Compartment).
ER_NUCLEI = {
    True: dict(radius_um=3.4, radius_sd=0.4, elongation=(1.0, 1.3), irregularity=0.03, chromatin=0.12, rim=0.2,
               vesicular=0.05, nucleolus=0.05, intensity_sd=0.08, stains={"hematoxylin": 1.25, "eosin": 0.1}),
    False: dict(radius_um=5.6, radius_sd=1.5, elongation=(1.0, 1.9), irregularity=0.14, chromatin=0.35, rim=0.55,
                vesicular=0.3, nucleolus=0.9, intensity_sd=0.28, stains={"hematoxylin": 1.8, "eosin": 0.12}),
}
PR_PACKING = {True: dict(spacing_um=8.5, density=0.97, jitter=0.55),
              False: dict(spacing_um=11.5, density=0.85, jitter=0.8)}
HER2_CYTOPLASM = {True: dict(stains={"hematoxylin": 0.12, "eosin": 0.8}, texture_amount=0.3), False: {}}
HER2_TILS = {True: dict(spacing_um=12.0, density=0.75), False: dict(spacing_um=12.0, density=0.08)}
"""Tumour-infiltrating lymphocytes: lymphocytes placed inside the tumour epithelium."""


@dataclass(frozen=True)
class CohortSize:
    """How big a generated cohort is: slide count, patient count and level-0 slide size."""

    n_slides: int
    n_patients: int
    width: int
    height: int
    mpp: float = 0.5


SIZES: dict[str, CohortSize] = {
    # ~110 patches of 256 px at 0.5 µm/px per slide (60-180)
    "default": CohortSize(n_slides=48, n_patients=40, width=6656, height=4864),
    # for CI: ~50 patches per slide
    "small": CohortSize(n_slides=24, n_patients=20, width=4608, height=3456),
}
"""Named cohort sizes (``pathology synth-cohort --size``)."""
_DEFAULT = SIZES["default"]


@dataclass(frozen=True)
class Phenotype:
    """The receptor status of a patient's tumour."""

    er: bool
    pr: bool
    her2: bool

    @property
    def recipe_name(self) -> str:
        return "he-" + "".join(f"{m}{'+' if getattr(self, m) else '-'}" for m in MARKERS)

    def __str__(self) -> str:
        return " ".join(f"{m.upper()}{'+' if getattr(self, m) else '-'}" for m in MARKERS)


def phenotype_recipe(p: Phenotype, base: Recipe = RECIPES["he"]) -> Recipe:
    """The H&E recipe with this phenotype's tumour nuclei and tumour cytoplasm."""
    nuclei = tuple(replace(k, **ER_NUCLEI[p.er], **PR_PACKING[p.pr]) if k.name == "tumor" else k for k in base.nuclei)
    lymphocyte = next(k for k in base.nuclei if k.name == "lymphocyte")
    nuclei += (replace(lymphocyte, name="til", region="epithelium", **HER2_TILS[p.her2]),)
    epithelium = replace(base.compartments["epithelium"], **HER2_CYTOPLASM[p.her2])
    return replace(base, name=p.recipe_name, nuclei=nuclei,
                   compartments={**base.compartments, "epithelium": epithelium})


def _register_phenotypes() -> None:
    """Make every phenotype selectable by ``SynthConfig.recipe`` (done on import, also in worker processes)."""
    for er in (True, False):
        for pr in ((True, False) if er else (False,)):
            for her2 in (True, False):
                p = Phenotype(er, pr, her2)
                RECIPES.setdefault(p.recipe_name, phenotype_recipe(p))


_register_phenotypes()


@dataclass(frozen=True)
class CohortSlide:
    """One slide of the cohort: where it goes, how it is rendered, and its manifest row."""

    slide_id: str
    patient_id: str
    slide_path: str                  # relative to the cohort folder
    config: SynthConfig
    phenotype: Phenotype | None      # None: tumour-free
    row: dict[str, str]              # the manifest cells (unknown labels empty)


@dataclass(frozen=True)
class CohortPlan:
    """Every slide and patient of a cohort, drawn but not yet rendered."""

    slides: list[CohortSlide]
    patients: list[dict]             # the full truth per patient (cohort.json)
    settings: dict


@dataclass(frozen=True)
class CohortInfo:
    """A written cohort: its manifest, its slides and the outcome of rendering each."""

    manifest_path: Path
    truth_path: Path
    slides: list[CohortSlide]
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def _chosen(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """Boolean mask with exactly round(share * n) True entries, at random places."""
    out = np.zeros(n, bool)
    out[rng.permutation(n)[:int(round(share * n))]] = True
    return out


def _survival(rng: np.random.Generator, tumour: np.ndarray, er: np.ndarray, her2: np.ndarray,
              burden: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observed months, event, hazard per month): exponential event times, ~30 % independently censored."""
    log_hazard = np.where(tumour, np.log(1 / 120) + 2.0 * ~er + 1.2 * her2 + 8.0 * (burden - 0.3), np.log(1 / 600))
    hazard = np.exp(log_hazard)
    event_time = rng.exponential(1 / hazard)
    censor_rate = 0.25 * np.median(hazard)  # ~30 % censored for this spread of hazards (simulated)
    censor_time = rng.exponential(1 / censor_rate, hazard.size)
    observed = np.maximum(np.minimum(event_time, censor_time), 0.5)
    return np.round(observed, 1), (event_time <= censor_time).astype(int), hazard


def plan_cohort(n_slides: int = _DEFAULT.n_slides, n_patients: int = _DEFAULT.n_patients, *, seed: int = 0,
                width: int = _DEFAULT.width, height: int = _DEFAULT.height, mpp: float = _DEFAULT.mpp,
                stain_variation: float = 0.5) -> CohortPlan:
    """Draw the cohort (labels, burdens, survival, slide seeds) without rendering anything."""
    if n_patients < 5:
        raise InputError(f"a cohort needs at least 5 patients, got {n_patients}")
    if not n_patients <= n_slides <= 2 * n_patients:
        raise InputError(f"slides must number between the patients and twice that ({n_patients}-"
                         f"{2 * n_patients}), got {n_slides}")
    rng = np.random.default_rng(seed)
    tumour = ~_chosen(rng, n_patients, 0.2)
    n_tumour = int(tumour.sum())
    er, pr, her2 = (np.zeros(n_patients, bool) for _ in range(3))
    er[tumour] = _chosen(rng, n_tumour, 0.65)
    pr[np.flatnonzero(er)] = _chosen(rng, int(er.sum()), 0.8)
    her2[tumour] = _chosen(rng, n_tumour, 0.3)
    burden = np.where(tumour, rng.uniform(0.15, 0.5, n_patients), 0.0)
    os_time, os_event, hazard = _survival(rng, tumour, er, her2, burden)
    unknown = {m: np.zeros(n_patients, bool) for m in MARKERS}
    for m in MARKERS:
        unknown[m][tumour] = _chosen(rng, n_tumour, 0.1)
    unknown["os"] = _chosen(rng, n_patients, 0.05)
    two_slides = set(rng.permutation(n_patients)[:n_slides - n_patients].tolist())
    patients, slides = [], []
    for p in range(n_patients):
        pid = f"P{p + 1:03d}"
        phenotype = Phenotype(bool(er[p]), bool(pr[p]), bool(her2[p])) if tumour[p] else None
        status = {m: "" if not tumour[p] or unknown[m][p] else str(int(getattr(phenotype, m))) for m in MARKERS}
        survival = {"os_time": "", "os_event": ""} if unknown["os"][p] else \
            {"os_time": f"{os_time[p]:g}", "os_event": str(os_event[p])}
        patients.append({"patient_id": pid, "tumor": bool(tumour[p]), "er": bool(er[p]), "pr": bool(pr[p]),
                         "her2": bool(her2[p]), "tumor_burden": round(float(burden[p]), 4),
                         "hazard_per_month": float(hazard[p]), "os_time": float(os_time[p]),
                         "os_event": int(os_event[p]), "unknown": [k for k, v in unknown.items() if v[p]]})
        for s in range(1 + int(p in two_slides)):
            sid = f"{pid}-{'AB'[s]}"
            fraction = float(np.clip(burden[p] * rng.uniform(0.8, 1.25), 0.1, 0.6)) if tumour[p] else 0.0
            config = SynthConfig(width=width, height=height, mpp=mpp, seed=derive_seed(seed, len(slides)),
                                 tumor_fraction=round(fraction, 4), stain_variation=stain_variation,
                                 recipe=phenotype.recipe_name if phenotype else "he")
            row = {"slide_id": sid, "patient_id": pid, "slide_path": f"slides/{sid}.svs",
                   "tumor": str(int(tumour[p])), **status, **survival}
            slides.append(CohortSlide(sid, pid, row["slide_path"], config, phenotype, row))
    settings = dict(n_slides=n_slides, n_patients=n_patients, seed=seed, width=width, height=height, mpp=mpp,
                    stain_variation=stain_variation)
    return CohortPlan(slides, patients, settings)


def manifest_text(plan: CohortPlan) -> str:
    """The cohort's manifest CSV (docs/architecture.md, "Manifests")."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(s.row for s in plan.slides)
    return buf.getvalue()


def _truth(plan: CohortPlan) -> dict:
    return {"schema": SCHEMA, "settings": plan.settings,
            "cues": {"er": {str(k): v for k, v in ER_NUCLEI.items()}, "pr": {str(k): v for k, v in PR_PACKING.items()},
                     "her2": {str(k): {"cytoplasm": HER2_CYTOPLASM[k], "tils": HER2_TILS[k]} for k in (True, False)}},
            "patients": plan.patients,
            "slides": [{"slide_id": s.slide_id, "patient_id": s.patient_id, "slide_path": s.slide_path,
                        "phenotype": asdict(s.phenotype) if s.phenotype else None, "config": s.config.to_dict()}
                       for s in plan.slides]}


def _is_complete(path: Path, config: SynthConfig) -> bool:
    """Whether ``path`` and its truth were written from exactly ``config`` and the current
    phenotype recipe (a rerun skips them)."""
    *masks, meta = truth_paths(path)
    if not (path.is_file() and meta.is_file() and all(m.is_file() for m in masks)):
        return False
    recipe = RECIPES[config.recipe]
    expected = json.loads(json.dumps({"config": config.to_dict(), "nuclei": [asdict(k) for k in recipe.nuclei],
                                      "compartments": {k: asdict(c) for k, c in recipe.compartments.items()}}))
    try:
        written = json.loads(meta.read_text())
        return {"config": written.get("config"), **{k: written.get("recipe", {}).get(k) for k in
                                                     ("nuclei", "compartments")}} == expected
    except (OSError, ValueError):
        return False


def render_job(slide: SlideInput, advance, *, plan: dict[str, CohortSlide]) -> Outcome:
    """Render one cohort slide (a :func:`pathology.batch.run_batch` job; counts level-0 rows)."""
    entry = plan[slide.slide_id]
    what = str(entry.phenotype) if entry.phenotype else "no tumour"
    if _is_complete(slide.path, entry.config):
        return Outcome(slide.slide_id, "skipped", 0, 0.0, f"already written ({what})")
    start, done = time.perf_counter(), [0]

    def rows(n: int, _total: int) -> None:
        advance(n - done[0])
        done[0] = n

    truth = write_synthetic_slide(slide.path, entry.config, progress=rows)
    if entry.phenotype:
        what += f", tumour {truth.info['tumor_fraction']:.0%}"
    return Outcome(slide.slide_id, "done", entry.config.height, time.perf_counter() - start, what)


def make_cohort(out_dir: str | Path, *, n_slides: int = _DEFAULT.n_slides, n_patients: int = _DEFAULT.n_patients,
                seed: int = 0, width: int = _DEFAULT.width, height: int = _DEFAULT.height, mpp: float = _DEFAULT.mpp,
                stain_variation: float = 0.5, workers: int = 1, console: Console | None = None) -> CohortInfo:
    """Write the cohort into ``out_dir``: ``slides/<slide_id>.svs`` (+ masks and truth JSON),
    ``manifest.csv`` and ``cohort.json``; returns their paths and each slide's outcome.

    ``workers`` > 1 renders that many slides at once in processes. Slides already written
    from the same parameters are skipped; a slide that fails is reported in
    ``CohortInfo.failed`` and the others go on. Same arguments, same bytes.
    """
    out_dir = Path(out_dir)
    plan = plan_cohort(n_slides, n_patients, seed=seed, width=width, height=height, mpp=mpp,
                       stain_variation=stain_variation)
    manifest, truth = out_dir / "manifest.csv", out_dir / "cohort.json"
    publish_text(manifest, manifest_text(plan))
    publish_text(truth, json.dumps(_truth(plan), indent=1) + "\n")
    inputs = [SlideInput(s.slide_id, out_dir / s.slide_path) for s in plan.slides]
    job = functools.partial(render_job, plan={s.slide_id: s for s in plan.slides})
    outcomes = run_batch(inputs, job, workers=max(1, min(workers, len(inputs))), unit="rows", console=console,
                         total=sum(s.config.height for s in plan.slides), status=status_path(out_dir),
                         clean=[out_dir])
    return CohortInfo(manifest, truth, plan.slides, outcomes)
