"""A run's ``config.json`` as typed, frozen records (schema ``mil-run/2``), and the one place that
reads and writes it.

``mil train`` writes it (:meth:`RunConfig.write`, atomically); ``mil predict``, ``pathology run``,
``pathology heatmap --model`` and ``pathology demo`` read it (:meth:`RunConfig.read`). The file
keeps the keys of pathology-mil 0.1.0, which wrote no ``schema``, and adds ``schema``; scripts
that read those keys keep working.

Versions: 0.1.0 (no schema); ``mil-run/1`` added ``schema``; ``mil-run/2`` added task kinds
beyond binary and survival (``heads[].classes``, regression targets' scaling per fold),
clinical covariates (their names, and their encoding fitted per fold in ``folds[].covariates``),
the level (``slide`` or ``patient``) and the training recipe's options (refit, feature scaling).
A version-1 reader would ignore those keys and predict wrongly, hence the new version.

Reading validates every field: a missing or ill-typed one is a :class:`RunError` naming the file
and the field (``config.json: field 'heads[0].n_outputs' is missing``). An older file is upgraded
in memory (:data:`UPGRADES`), its training options set to what that version did; a file with a
newer schema is refused in one line. Every key of a ``mil-run/2`` file is required (``null``
where the type allows it), except the training options with a default (:class:`TrainConfig`),
so a run written before an option existed reads with the option's default, the bag
attributes, which hold what the first training bag had, and the model card's records added later
(``provenance``, ``ood``, ``calibration``: null in older runs). Unknown keys are ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from pathology import __version__
from pathology.errors import InputError, UserError
from pathology.publish import publish_json

from . import metrics as M
from .calibration import METHODS as CALIBRATIONS
from .calibration import CalibrationRecord
from .ood import ALPHA as OOD_ALPHA
from .ood import OodRecord
from .provenance import Provenance

log = logging.getLogger(__name__)

SCHEMA_NAME = "mil-run"
VERSION = 2
SCHEMA = f"{SCHEMA_NAME}/{VERSION}"
CONFIG_NAME = "config.json"
SOFTWARE = "pathology-mil"
KINDS = ("binary", "multiclass", "regression", "survival")
R = TypeVar("R")
SURVIVAL_LOSSES = ("nll", "cox")
SCALINGS = ("robust", "standard")
LEVELS = ("slide", "patient")
COX_BATCH = 16                    # bags per step with a Cox head when --batch-size is not given


class RunError(UserError):
    """A run folder that cannot be used (for prediction); the message names the file."""


class FieldError(ValueError):
    """A field of a record that does not hold (``where`` relative to the record being built);
    reading turns it into a :class:`RunError` naming the file, building one in code is a bug."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"field {where!r} {problem}")
        self.where, self.problem = where, problem


def _require(ok: bool, where: str, problem: str) -> None:
    if not ok:
        raise FieldError(where, problem)


# ---------------------------------------------------------------- the records


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``mil train`` (``config.json``'s ``train``). The defaults are the training
    recipe (README, "Training recipe"): one bag per step, the epoch count chosen on an inner
    split, then a refit on all training bags; robust feature scaling; class-balanced losses."""

    model: str = "abmil"
    targets: tuple[str, ...] = ()
    survival: tuple[str, str] | None = None       # (time column, event column)
    folds: int = 5
    seed: int = 0
    epochs: int = 50                              # at most, per fit
    lr: float = 2e-4
    weight_decay: float = 1e-4
    dropout: float = 0.25
    hidden: int = 256
    batch_size: int | None = None                 # bags per optimizer step; None: 1, or COX_BATCH with a Cox head
    patience: int = 10                            # epochs without a better validation loss before stopping
    val_fraction: float = 0.2
    max_instances: int | None = None              # random subset of larger bags in training
    in_memory: bool = False
    features: str | None = None
    device: str = "auto"
    survival_loss: str = "nll"
    survival_bins: int = 4
    threshold: float = M.THRESHOLD
    n_bootstrap: int = M.N_BOOTSTRAP
    model_kwargs: dict = field(default_factory=dict)
    threads: int | None = None                    # torch CPU threads per fold (None: all cores); fixed for
                                                  # identical results between sequential and parallel folds
    kinds: dict[str, str] = field(default_factory=dict)   # task -> kind given with --kind (others inferred)
    covariates: tuple[str, ...] = ()              # clinical covariate columns fused with the slide
    level: str = "slide"                          # "patient": one bag per patient (all their slides)
    refit: bool = True                            # refit on all training bags for the epochs chosen on inner splits
    inner_folds: int = 3                          # inner splits choosing the epoch count (1: one val_fraction split)
    scaling: str = "robust"                       # input features: "robust" (median/IQR, clipped) or "standard"
    class_balance: bool = True                    # class-balanced binary and multi-class losses
    calibration: str = "none"                     # "temperature": scale each fold's logits (mil.calibration)
    ood_alpha: float = OOD_ALPHA                  # out-of-distribution flags: share of like slides flagged (mil.ood)
    cohort_name: str | None = None                # provenance (mil.provenance); None: the manifest's folder
    synthetic: bool | None = None                 # None: synthetic when a synth-cohort cohort.json is beside it
    intended_use: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "survival", tuple(self.survival) if self.survival else None)
        object.__setattr__(self, "covariates", tuple(self.covariates))
        object.__setattr__(self, "kinds", dict(self.kinds))
        if self.survival_loss not in SURVIVAL_LOSSES:
            raise InputError(f"survival_loss must be one of {', '.join(SURVIVAL_LOSSES)}, got {self.survival_loss!r}")
        if self.scaling not in SCALINGS:
            raise InputError(f"scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        if self.level not in LEVELS:
            raise InputError(f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")
        for name in ("epochs", "hidden", "survival_bins", "inner_folds"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.calibration not in CALIBRATIONS:
            raise InputError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        if self.calibration == "temperature" and self.refit:  # the refit model has seen every training bag
            raise InputError("--calibration temperature needs validation bags the model did not train on: "
                             "use it with --no-refit")
        if not 0 < self.ood_alpha < 1:
            raise InputError(f"ood_alpha must be in (0, 1), got {self.ood_alpha}")

    @property
    def step_bags(self) -> int:
        """Bags per optimizer step: ``batch_size``, else one (as ABMIL, CLAM and most MIL papers
        train), or :data:`COX_BATCH` when a Cox head needs several bags for its partial likelihood."""
        if self.batch_size is not None:
            return self.batch_size
        return COX_BATCH if self.survival and self.survival_loss == "cox" else 1


@dataclass(frozen=True, kw_only=True)
class Software:
    """What wrote the run."""

    name: str
    version: str
    torch: str


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The architecture every fold model is rebuilt with (:func:`mil.models.create_model`)."""

    name: str
    in_dim: int
    hidden: int
    dropout: float
    kwargs: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    """One task: its manifest ``columns`` (the label; survival: time, event), the head's
    ``n_outputs``, the call's ``threshold`` (binary tasks), what its score means, and its
    ``classes`` (multiclass: in output order; binary: () for yes/no labels, else (negative, positive))."""

    name: str
    kind: str
    columns: tuple[str, ...]
    n_outputs: int
    threshold: float | None
    output: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        _require(self.kind in KINDS, "kind", f"must be one of {', '.join(map(repr, KINDS))}, not {self.kind!r}")
        _require(self.n_outputs >= 1, "n_outputs", f"must be at least 1, not {self.n_outputs}")


@dataclass(frozen=True, kw_only=True)
class SurvivalSpec:
    """The survival task: manifest columns, loss, time unit and, for the discrete-time NLL, the
    finite cuts between its time bins per task and fold (``"<task>/fold_<k>"``): bin k runs
    from cut k-1 to cut k, the first from -inf and the last to +inf."""

    time_column: str
    event_column: str
    loss: str
    time_unit: str
    bin_cuts: dict[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        _require(self.loss in SURVIVAL_LOSSES, "loss",
                 f"must be one of {', '.join(map(repr, SURVIVAL_LOSSES))}, not {self.loss!r}")


@dataclass(frozen=True, kw_only=True)
class ManifestRecord:
    """The manifest the run was trained on (``sha256`` None when it was not a file)."""

    path: str
    sha256: str | None
    n_slides: int


@dataclass(frozen=True, kw_only=True)
class CovariateFit:
    """One clinical covariate's encoding, fitted on a fold's training cases (:mod:`mil.covariates`):
    numeric: ``(x - mean) / sd`` with missing values filled by ``fill`` (the training median);
    categorical: one-hot over ``levels``; ``missing``: a 0/1 missing column follows."""

    name: str
    kind: str                 # "numeric" | "categorical"
    mean: float
    sd: float
    fill: float
    levels: tuple[str, ...]
    missing: bool


@dataclass(frozen=True, kw_only=True)
class FoldSpec:
    """One fold: its index (``fold_<fold>/model.safetensors``), its test cases (slides, or patients
    at the patient level), what was fitted on its training cases: regression targets' (mean, sd),
    whose standardized values the head predicts, and the covariates' encodings."""

    fold: int
    test: tuple[str, ...]
    targets: dict[str, tuple[float, float]]
    covariates: tuple[CovariateFit, ...]


@dataclass(frozen=True, kw_only=True)
class Tiling:
    """The first training bag's ``tiling`` attribute: ``params``, the options that made it (read
    back by :meth:`pathology.tiling.pipeline.TileOptions.from_params`, which owns their format),
    and the rest (``details``: reader, read level, grid stride... of that slide, provenance only),
    kept as the file has them, beside ``params``."""

    params: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fields_from_json(cls, value: dict) -> dict:
        out = {"details": {k: v for k, v in value.items() if k != "params"}}
        if "params" in value:
            out["params"] = value["params"]
        return out

    def fields_to_json(self) -> dict:
        return {**({} if self.params is None else {"params": self.params}), **self.details}


@dataclass(frozen=True, kw_only=True)
class FeatureAttrs:
    """The attributes of the training bags' feature set (whichever the bag had)."""

    encoder: str | None = None
    weights_sha256: str | None = None
    dim: int | None = None
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class BagSettings:
    """How the training bags were made (the first bag's attributes), so ``pathology run``
    prepares new slides the same way; the bag's ``stain`` fit is kept as the bag has it."""

    schema: str
    tiling: Tiling | None = None
    stain: dict[str, Any] | None = None
    target_mpp: float | None = None
    patch_size: int | None = None
    features: FeatureAttrs | None = None


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """``config.json``: every option, the model and heads, the data's provenance, the folds and
    the bag settings. Provenance is None in 0.1.0 files written by hand (scripts, tests)."""

    schema: str = SCHEMA
    software: Software | None
    train: TrainConfig | None
    model: ModelSpec
    heads: tuple[HeadSpec, ...]
    features: str | None              # the bags' feature set the models were trained on
    in_dim: int
    survival: SurvivalSpec | None
    manifest: ManifestRecord | None
    folds: tuple[FoldSpec, ...]
    bag_settings: BagSettings | None
    level: str                        # "slide", or "patient": one bag pools a patient's slides
    covariates: tuple[str, ...]       # clinical covariate columns the models need (encodings per fold)
    provenance: Provenance | None = None          # the model card's facts (mil.provenance)
    ood: OodRecord | None = None                  # out-of-distribution references (mil.ood)
    calibration: CalibrationRecord | None = None  # temperature scaling (mil.calibration)

    def __post_init__(self) -> None:
        _require(self.schema == SCHEMA, "schema", f"must be {SCHEMA!r}, not {self.schema!r}")
        _require(self.level in LEVELS, "level", f"must be one of {', '.join(map(repr, LEVELS))}, not {self.level!r}")
        _require(self.in_dim >= 1, "in_dim", f"must be at least 1, not {self.in_dim}")
        _require(self.model.in_dim == self.in_dim, "model.in_dim",
                 f"is {self.model.in_dim}, but in_dim is {self.in_dim}")
        _require(bool(self.heads), "heads", "lists no task")
        names = [h.name for h in self.heads]
        _require(len(set(names)) == len(names), "heads", f"names a task twice ({', '.join(names)})")
        _require(bool(self.folds), "folds", "lists no fold")
        indices = [f.fold for f in self.folds]
        _require(len(set(indices)) == len(indices), "folds", f"names a fold twice ({', '.join(map(str, indices))})")

    @property
    def kinds(self) -> dict[str, str]:
        """task -> "binary" | "multiclass" | "regression" | "survival", in head order."""
        return {h.name: h.kind for h in self.heads}

    def head(self, name: str) -> HeadSpec:
        return next(h for h in self.heads if h.name == name)

    @property
    def thresholds(self) -> dict[str, float | None]:
        """task -> the cut-off of its call (None for survival)."""
        return {h.name: h.threshold for h in self.heads}

    @property
    def survival_loss(self) -> str:
        """The survival head's loss, which decides how its outputs become a risk."""
        if self.survival is not None:
            return self.survival.loss
        return self.train.survival_loss if self.train is not None else "nll"

    @property
    def feature_attrs(self) -> FeatureAttrs | None:
        """The training bags' feature attributes (encoder, weights), when known."""
        return self.bag_settings.features if self.bag_settings is not None else None

    @property
    def tile_params(self) -> dict[str, Any] | None:
        """The training bags' tiling options (``pathology tile`` bags only)."""
        tiling = self.bag_settings.tiling if self.bag_settings is not None else None
        return tiling.params if tiling is not None else None

    def to_json(self) -> dict:
        """The JSON object of ``config.json`` (NaN/inf as null)."""
        return M.json_safe(_to_json(self))

    def write(self, path: str | Path) -> Path:
        """Write ``path`` atomically."""
        return publish_json(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> RunConfig:
        """Read and validate ``path``; :class:`RunError` naming the file (and field) if it is not
        a run config this version can use."""
        path = Path(path)
        if not path.is_file():
            raise RunError(f"{path}: no such file")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunError(f"{path}: not JSON ({exc})") from None
        return cls.from_json(raw, source=path)

    @classmethod
    def from_json(cls, raw: Any, *, source: str | Path = CONFIG_NAME) -> RunConfig:
        """A decoded ``config.json`` (any schema this version reads) as a :class:`RunConfig`."""
        if not isinstance(raw, dict):
            raise RunError(f"{source}: not a run config (holds {_kind(raw)}, not a JSON object)")
        version = _schema_version(raw, source)
        if version < VERSION:
            log.debug("%s: %s format (no schema), upgraded to %s in memory", source, _legacy_name(raw), SCHEMA)
        for v in range(version, VERSION):
            raw = UPGRADES[v](raw)
        try:
            return read_record(cls, raw)
        except FieldError as exc:
            raise RunError(f"{source}: {exc}") from None


# ---------------------------------------------------------------- versions


def _schema_version(raw: dict, source: str | Path) -> int:
    """The file's schema version: 0 without one (0.1.0); a newer one is refused."""
    if "schema" not in raw:
        return 0
    schema = raw["schema"]
    match = re.fullmatch(rf"{SCHEMA_NAME}/(\d+)", schema) if isinstance(schema, str) else None
    if match is None:
        raise RunError(f"{source}: field 'schema' is {schema!r}, not {SCHEMA_NAME}/<version>: not a run config")
    version = int(match[1])
    if version > VERSION:
        software = raw.get("software")
        writer = software.get("version") if isinstance(software, dict) else None
        by = f"{SOFTWARE} {writer}, " if isinstance(writer, str) else ""
        raise RunError(f"{source}: written by a newer version ({by}schema {schema}); {SOFTWARE} {__version__} reads "
                       f"up to {SCHEMA}: upgrade {SOFTWARE} to use this run")
    return version


def _legacy_name(raw: dict) -> str:
    software = raw.get("software")
    version = software.get("version") if isinstance(software, dict) else None
    return f"{SOFTWARE} {version}" if isinstance(version, str) else "legacy"


def _from_0(raw: dict) -> dict:
    """0.1.0 (no schema) -> mil-run/1, the same keys: ``schema`` added. Its files written before
    commit 9ba832f hold survival ``bin_edges`` (infinite ends as null) instead of ``bin_cuts``;
    ones written by hand (scripts, tests) may lack provenance, test slides and head columns, read
    as null or empty."""
    raw = {**raw, "schema": f"{SCHEMA_NAME}/1"}
    for key in ("software", "train", "features", "survival", "manifest", "bag_settings"):
        raw.setdefault(key, None)
    if isinstance(raw.get("model"), dict):
        raw["model"] = {**({"in_dim": raw["in_dim"]} if "in_dim" in raw else {}), "kwargs": {}, **raw["model"]}
    if isinstance(raw.get("heads"), list):
        raw["heads"] = [{"columns": [], "threshold": None, "output": "", **h} if isinstance(h, dict) else h
                        for h in raw["heads"]]
    if isinstance(raw.get("folds"), list):
        raw["folds"] = [{"test": [], **f} if isinstance(f, dict) else f for f in raw["folds"]]
    survival = raw.get("survival")
    if isinstance(survival, dict) and "bin_cuts" not in survival and isinstance(survival.get("bin_edges"), dict):
        edges = survival["bin_edges"]
        cuts = {k: e[1:-1] if isinstance(e, list) else e for k, e in edges.items()}
        raw["survival"] = {**{k: v for k, v in survival.items() if k != "bin_edges"}, "bin_cuts": cuts}
    return raw


def _from_1(raw: dict) -> dict:
    """mil-run/1 -> mil-run/2: binary and survival heads only (no classes), no covariates, slide
    level; trained without refit, with standardized features and 8 bags a step, as that
    version did (its binary losses were already class-balanced)."""
    raw = {**raw, "schema": f"{SCHEMA_NAME}/2", "level": "slide", "covariates": []}
    if isinstance(raw.get("heads"), list):
        raw["heads"] = [{"classes": [], **h} if isinstance(h, dict) else h for h in raw["heads"]]
    if isinstance(raw.get("folds"), list):
        raw["folds"] = [{"targets": {}, "covariates": [], **f} if isinstance(f, dict) else f for f in raw["folds"]]
    if isinstance(raw.get("train"), dict):
        raw["train"] = {"refit": False, "inner_folds": 1, "scaling": "standard", "batch_size": 8, **raw["train"]}
    return raw


UPGRADES = {0: _from_0, 1: _from_1}   # version -> its upgrade to the next version


# ---------------------------------------------------------------- JSON <-> records


def read_record(cls: type[R], raw: Any) -> R:
    """``raw`` (decoded JSON) as the record ``cls``, validated; :class:`FieldError` naming the field."""
    return _parse(cls, raw, "")


_NONE = type(None)


def _parse(tp: Any, value: Any, where: str, nullable: bool = False) -> Any:
    """``value`` (decoded JSON) as type ``tp``; :class:`FieldError` at ``where`` if it is not one."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        (inner,) = [a for a in args if a is not _NONE]
        return _parse(inner, value, where, nullable=_NONE in args)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _mismatch(tp, value, where, nullable)
        return _parse_record(tp, value, where)
    check = _SCALARS.get(tp)
    if check is not None:
        if not check(value):
            raise _mismatch(tp, value, where, nullable)
        return float(value) if tp is float else value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _mismatch(tp, value, where, nullable)
        item = args[1] if args else Any
        return {k: _parse(item, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list):
            raise _mismatch(tp, value, where, nullable)
        items = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(items) != len(value):
            raise FieldError(where, f"must be a list of {len(items)} items, not {len(value)}")
        return tuple(_parse(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(items, value)))
    raise TypeError(f"no JSON reading for type {tp!r} (field {where!r})")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _parse_record(cls: type, value: dict, where: str) -> Any:
    if hasattr(cls, "fields_from_json"):
        value = cls.fields_from_json(value)
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        at = f"{where}.{f.name}" if where else f.name
        if f.name in value:
            kwargs[f.name] = _parse(hints[f.name], value[f.name], at)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise FieldError(at, "is missing")
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise FieldError(f"{where}.{exc.where}" if where else exc.where, exc.problem) from None
    except UserError as exc:                       # TrainConfig's own checks
        raise FieldError(where, f"is invalid: {exc}") from None


def _to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        if hasattr(obj, "fields_to_json"):
            return _to_json(obj.fields_to_json())
        return {f.name: _to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    return obj


_SCALARS = {
    str: lambda v: isinstance(v, str),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    bool: lambda v: isinstance(v, bool),
}
_WANTED = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
           tuple: "a list"}


def _mismatch(tp: Any, value: Any, where: str, nullable: bool) -> FieldError:
    wanted = "an object" if dataclasses.is_dataclass(tp) else _WANTED[get_origin(tp) or tp]
    return FieldError(where, f"must be {wanted}{' or null' if nullable else ''}, not {_kind(value)}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return "a list" if isinstance(value, list) else "an object"
