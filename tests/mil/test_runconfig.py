"""``config.json`` as a typed, versioned record (``mil-run/2``): a run folder written by
pathology-mil 0.1.0 (no schema; tests/data/runs/mil-run-0.1.0, see its README) keeps loading,
predicting and driving ``pathology run``, as does a ``mil-run/1`` file; a fresh run's file reads
back as the same object and keeps 0.1.0's keys; a future schema and a bad field are refused in
one line naming the file and the field (exit 2)."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mil.cli import app as mil_app
from mil.manifest import load_manifest
from mil.models import Head, create_model
from mil.predict import load_run, predict_bag
from mil.runconfig import SCHEMA, RunConfig, RunError, TrainConfig
from mil.train import TrainConfig as TrainConfigFromTrain
from mil.train import train_cross_validation
from pathology import __version__
from pathology.cli import app as pathology_app
from pathology.encoders import load_encoder
from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.tiling.pipeline import TileOptions
from tests.factories import DATA, DIM, ENCODER, invoke, write_bag, write_cohort

LEGACY = DATA / "runs" / "mil-run-0.1.0"
LEGACY_ENCODER, LEGACY_DIM = "stain-texture", 110          # what the legacy run was trained on (its README)

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def legacy_json() -> dict:
    return json.loads((LEGACY / "config.json").read_text())


def legacy_bag(path, n: int = 40, seed: int = 0) -> np.ndarray:
    """A bag of ``n`` random 110-d ``stain-texture`` features with the legacy run's encoder
    weights recorded (write_bag records zeros); returns the features as the model reads them."""
    x = np.random.default_rng(seed).normal(size=(n, LEGACY_DIM))
    write_bag(path, x, encoder=LEGACY_ENCODER)
    with h5py.File(path, "a") as f:
        f[f"features/{LEGACY_ENCODER}"].attrs["weights_sha256"] = legacy_json()["bag_settings"]["features"][
            "weights_sha256"]
    return x.astype(np.float16).astype(np.float32)


def fold_models_by_hand(run_dir, config: dict) -> list:
    """The fold models rebuilt from the JSON keys and the safetensors files, without mil.predict."""
    heads = [Head(h["name"], h["n_outputs"]) for h in config["heads"]]
    models = []
    for fold in config["folds"]:
        model = create_model(config["model"]["name"], config["in_dim"], heads, hidden=config["model"]["hidden"],
                             dropout=config["model"]["dropout"])
        model.load_state_dict(load_file(run_dir / f"fold_{fold['fold']}" / "model.safetensors"))
        models.append(model.eval())
    return models


# ---------------------------------------------------------------- the 0.1.0 run folder


def test_the_legacy_run_loads_as_an_upgraded_config():
    run = load_run(LEGACY)
    config = run.config
    assert config.schema == SCHEMA                                   # upgraded in memory; the file is untouched
    assert "schema" not in legacy_json()
    assert (config.model.name, config.model.hidden, config.in_dim, config.features) == \
        ("abmil", 16, LEGACY_DIM, LEGACY_ENCODER)
    assert run.kinds == {"tumor": "binary", "survival": "survival"} and len(run.models) == 2
    assert config.thresholds == {"tumor": 0.5, "survival": None} and run.survival_loss == "nll"
    assert [h.n_outputs for h in config.heads] == [1, 4]           # 4 NLL time bins (the default)
    # the README's command, with the recipe of its version: no refit, standardized features, 8 bags a step
    assert config.train == TrainConfig(model="abmil", targets=("tumor",), survival=("os_time", "os_event"), folds=2,
                                       epochs=3, patience=2, hidden=16, n_bootstrap=50, batch_size=8, refit=False,
                                       inner_folds=1, scaling="standard")
    assert (config.level, config.covariates) == ("slide", ())
    assert [h.classes for h in config.heads] == [(), ()] and all(f.targets == {} for f in config.folds)
    assert [f.test for f in config.folds] == [("synthetic_001", "synthetic_003", "synthetic_004", "synthetic_006"),
                                              ("synthetic_000", "synthetic_002", "synthetic_005", "synthetic_007")]
    assert config.software.version == "0.1.0" and config.manifest.n_slides == 8
    assert config.manifest.sha256 == hashlib.sha256((LEGACY / "manifest.csv").read_bytes()).hexdigest()
    assert config.feature_attrs.encoder == LEGACY_ENCODER and config.feature_attrs.dim == LEGACY_DIM
    assert config.tile_params["grid"] == {"min_tissue": 0.5, "overlap": 0, "patch_size": 256, "target_mpp": 0.5}
    # written back, the upgraded config is the file plus its schema and the keys added since 0.1.0,
    # those at the values that reproduce what 0.1.0 did: no key lost, renamed or changed
    written = config.to_json()
    assert drop_later_keys(written) == {"schema": SCHEMA, **legacy_json()}
    added_since = {"threads": None, "kinds": {}, "covariates": [], "level": "slide", "refit": False, "inner_folds": 1,
                   "scaling": "standard", "class_balance": True, "calibration": "none", "ood_alpha": 0.01,
                   "cohort_name": None, "synthetic": None, "intended_use": ""}
    assert {k: written["train"][k] for k in added_since} == added_since
    assert (written["level"], written["covariates"]) == ("slide", [])
    # the model card's records (issue 19): none in a run made before them
    assert config.provenance is None and config.ood is None and config.calibration is None
    assert (written["provenance"], written["ood"], written["calibration"]) == (None, None, None)


LATER_KEYS = {"": ("level", "covariates", "provenance", "ood", "calibration"), "heads": ("classes",),
              "folds": ("targets", "covariates"),
              "train": ("kinds", "covariates", "level", "refit", "inner_folds", "scaling", "class_balance", "threads",
                        "calibration", "ood_alpha", "cohort_name", "synthetic", "intended_use")}


def drop_later_keys(raw: dict) -> dict:
    """A config.json without the keys added after 0.1.0 (:data:`LATER_KEYS`)."""
    raw = {k: v for k, v in raw.items() if k not in LATER_KEYS[""]}
    raw["heads"] = [{k: v for k, v in h.items() if k not in LATER_KEYS["heads"]} for h in raw["heads"]]
    raw["folds"] = [{k: v for k, v in f.items() if k not in LATER_KEYS["folds"]} for f in raw["folds"]]
    raw["train"] = {k: v for k, v in raw["train"].items() if k not in LATER_KEYS["train"]}
    return raw


def test_mil_predict_applies_the_legacy_run(tmp_path):
    bags = tmp_path / "bags"
    bags.mkdir()
    x = legacy_bag(bags / "new.h5")
    result = invoke(mil_app, "predict", "--model", LEGACY, "--bags", bags, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "predictions.csv") as fh:
        scores = {r["task"]: float(r["score"]) for r in csv.DictReader(fh)}
    models = fold_models_by_hand(LEGACY, legacy_json())
    with torch.no_grad():
        outs = [m(torch.from_numpy(x)) for m in models]
    tumour = np.mean([torch.sigmoid(o.logits["tumor"]).item() for o in outs])
    assert scores["tumor"] == pytest.approx(tumour, abs=1e-6)
    assert set(scores) == {"tumor", "survival"}
    with h5py.File(tmp_path / "out" / "attention" / "new.h5") as f:
        assert f.attrs["model"] == "abmil" and f["attention/tumor"].shape == (len(x),)

    # a bag of other dimension, or from other encoder weights, is refused by name
    write_bag(bags / "narrow.h5", np.zeros((5, DIM)), encoder=LEGACY_ENCODER)
    result = invoke(mil_app, "predict", "--model", LEGACY, "--bags", bags, "--out", tmp_path / "out2")
    assert result.exit_code == 1 and "narrow.h5: features 'stain-texture' have dimension 16" in result.output


def test_today_s_encoder_matches_the_legacy_run():
    """The legacy run's recorded stain-texture weights are today's, so `pathology run` can apply it."""
    encoder = load_encoder(LEGACY_ENCODER, device="cpu")
    attrs = load_run(LEGACY).config.feature_attrs
    assert (encoder.weights_sha256, encoder.spec.dim) == (attrs.weights_sha256, attrs.dim)


def run_on_slide(tmp_path, model, name: str) -> tuple[dict, dict, np.ndarray]:
    """`pathology run` of ``model`` on one small synthetic slide: (results row, bag tiling params, features)."""
    slide = tmp_path / "in" / "new.svs"
    if not slide.exists():
        write_synthetic_slide(slide, SynthConfig(width=2048, height=1536, mpp=0.5, seed=7, tumor_fraction=0.4))
    out = tmp_path / name
    result = invoke(pathology_app, "run", slide, "--model", model, "--out", out)
    assert result.exit_code == 0, result.output
    with h5py.File(out / "bags" / "new.h5") as f:
        params = json.loads(f.attrs["tiling"])["params"]
        assert int(f.attrs["patch_size"]) == params["grid"]["patch_size"]
        x = f[f"features/{LEGACY_ENCODER}"][:].astype(np.float32)
    with open(out / "results.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    return row, params, x


@pytest.mark.slow
def test_pathology_run_applies_the_legacy_run_with_its_tiling(tmp_path):
    row, tiled, x = run_on_slide(tmp_path, LEGACY, "out")
    stored = legacy_json()["bag_settings"]["tiling"]["params"]
    assert TileOptions.from_params(tiled) == TileOptions.from_params(stored)
    assert x.shape[1] == LEGACY_DIM and len(x) > 0
    scores, _ = predict_bag(load_run(LEGACY), x)
    assert row["status"] == "done" and float(row["tumor_score"]) == pytest.approx(scores["tumor"], abs=1e-6)
    assert float(row["tumor_threshold"]) == 0.5 and row["survival_risk"]

    # the stored settings, not the defaults, drive the tiler: edit them in a copy of the run
    edited = tmp_path / "edited"
    shutil.copytree(LEGACY, edited)
    config = legacy_json()
    grid = config["bag_settings"]["tiling"]["params"]["grid"]
    grid.update(patch_size=192, min_tissue=0.8)
    (edited / "config.json").write_text(json.dumps(config))
    _, tiled, y = run_on_slide(tmp_path, edited, "out-edited")
    assert tiled["grid"]["patch_size"] == 192 and tiled["grid"]["min_tissue"] == 0.8
    assert 0 < len(y) != len(x)


# ---------------------------------------------------------------- a fresh run


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    manifest = write_cohort(root, n_patients=12, n_instances=(6, 12))
    config = TrainConfig(model="abmil", targets=("er",), survival=("os_time", "os_event"), folds=2, epochs=2,
                         patience=2, hidden=8, n_bootstrap=10, model_kwargs={})
    cohort = load_manifest(manifest, targets=config.targets, survival=config.survival, bags_dir=root / "bags")
    train_cross_validation(cohort, config, root / "run")
    return root, config


def test_a_fresh_run_reads_back_as_what_was_trained(fresh, tmp_path):
    root, trained = fresh
    path = root / "run" / "config.json"
    config = RunConfig.read(path)
    assert config.schema == SCHEMA and json.loads(path.read_text())["schema"] == "mil-run/2"
    assert config.train == trained and TrainConfigFromTrain is TrainConfig
    assert config.software.version == __version__ and config.software.name == "pathology-mil"
    assert (config.features, config.in_dim, config.model.in_dim) == (ENCODER, DIM, DIM)
    assert config.manifest.sha256 == hashlib.sha256((root / "manifest.csv").read_bytes()).hexdigest()
    slides = [s for f in config.folds for s in f.test]
    assert sorted(slides) == sorted(p.stem for p in (root / "bags").glob("*.h5"))   # each slide tested once
    cuts = config.survival.bin_cuts
    assert sorted(cuts) == ["survival/fold_0", "survival/fold_1"]
    assert all(len(c) == 3 and list(c) == sorted(c) for c in cuts.values())      # 4 bins: 3 increasing cuts
    assert config.feature_attrs.encoder == ENCODER and config.bag_settings.patch_size == 256

    # write -> read gives the same object, and the same bytes as mil train wrote
    again = config.write(tmp_path / "config.json")
    assert RunConfig.read(again) == config
    assert again.read_bytes() == path.read_bytes()


def test_a_fresh_run_keeps_the_keys_of_0_1_0(fresh):
    """Scripts written against 0.1.0's config.json find every key where it was."""
    new, old = json.loads((fresh[0] / "run" / "config.json").read_text()), legacy_json()
    assert list(new) == ["schema", *old, *LATER_KEYS[""]]
    for section in ("software", "train", "model", "survival", "manifest"):
        assert set(old[section]) <= set(new[section]), section
    assert all(set(h) == {*old["heads"][0], *LATER_KEYS["heads"]} for h in new["heads"])
    assert all(set(f) == {*old["folds"][0], *LATER_KEYS["folds"]} for f in new["folds"])
    assert set(old["bag_settings"]) == set(new["bag_settings"])
    assert set(old["bag_settings"]["features"]) == set(new["bag_settings"]["features"])


# ---------------------------------------------------------------- refused


def _set(raw: dict, dotted: str, value) -> dict:
    """``raw`` with the field at ``dotted`` (``heads.0.n_outputs``) set, or deleted when ``value`` is ``...``."""
    raw = copy.deepcopy(raw)
    *parents, last = [int(k) if k.isdigit() else k for k in dotted.split(".")]
    node = raw
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return raw


BAD_FIELDS = [   # (field, value or ... to delete it, the line's tail)
    ("in_dim", ..., "field 'in_dim' is missing"),
    ("in_dim", "110", "field 'in_dim' must be an integer, not a string ('110')"),
    ("heads.0.n_outputs", ..., "field 'heads[0].n_outputs' is missing"),
    ("heads.1.kind", "ordinal",
     "field 'heads[1].kind' must be one of 'binary', 'multiclass', 'regression', 'survival', not 'ordinal'"),
    ("heads.0.threshold", "high", "field 'heads[0].threshold' must be a number or null, not a string ('high')"),
    ("model.dropout", None, "field 'model.dropout' must be a number, not null"),
    ("model.in_dim", 64, "field 'model.in_dim' is 64, but in_dim is 110"),
    ("folds.1.test", "synthetic_000", "field 'folds[1].test' must be a list, not a string ('synthetic_000')"),
    ("folds", [], "field 'folds' lists no fold"),
    ("survival.loss", "mse", "field 'survival.loss' must be one of 'nll', 'cox', not 'mse'"),
    ("survival.bin_cuts.survival/fold_0", [1, "x"], "field 'survival.bin_cuts.survival/fold_0[1]' must be a number"),
    ("train.epochs", 0, "field 'train' is invalid: epochs must be at least 1, got 0"),
    ("bag_settings.features.dim", 1.5,
     "field 'bag_settings.features.dim' must be an integer or null, not a number (1.5)"),
    ("bag_settings.tiling.params", [], "field 'bag_settings.tiling.params' must be an object or null, not a list"),
]


@pytest.mark.parametrize("schema", [None, "mil-run/1", SCHEMA], ids=["0.1.0", "mil-run/1", "mil-run/2"])
@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS, ids=[f[0] for f in BAD_FIELDS])
def test_a_bad_field_is_named(field, value, message, schema):
    base = legacy_json() if schema != SCHEMA else RunConfig.from_json(legacy_json()).to_json()
    raw = _set(base, field, value)
    if schema:
        raw["schema"] = schema
    with pytest.raises(RunError) as info:
        RunConfig.from_json(raw, source="run/config.json")
    assert str(info.value).startswith(f"run/config.json: {message}"), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.update(schema="mil-run/3", software={**c["software"], "version": "9.0.0"}),
     "config.json: written by a newer version (pathology-mil 9.0.0, schema mil-run/3); "
     f"pathology-mil {__version__} reads up to mil-run/2: upgrade pathology-mil to use this run"),
    (lambda c: c.update(schema="pathology-bag/1"), "config.json: field 'schema' is 'pathology-bag/1', not mil-run/"),
    (lambda c: c["heads"][0].pop("n_outputs"), "config.json: field 'heads[0].n_outputs' is missing"),
    (lambda c: c.update(schema="mil-run/2"), "config.json: field 'heads[0].classes' is missing"),
    (lambda c: c.update(in_dim=[110]), "config.json: field 'in_dim' must be an integer, not a list"),
], ids=["future schema", "other schema", "missing field", "a version-1 file called version 2", "ill-typed field"])
def test_mil_predict_refuses_the_config_in_one_line(tmp_path, edit, message):
    run = tmp_path / "run"
    shutil.copytree(LEGACY, run)
    config = legacy_json()
    edit(config)
    (run / "config.json").write_text(json.dumps(config))
    (tmp_path / "bags").mkdir()
    result = invoke(mil_app, "predict", "--model", run, "--bags", tmp_path / "bags", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(run / "config.json") in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_survival_bin_edges_of_early_0_1_0_files_become_bin_cuts():
    """Before commit 9ba832f, 0.1.0 stored the bin edges with their infinite ends as null."""
    raw = legacy_json()
    survival = raw["survival"]
    edges = {k: [None, *cuts, None] for k, cuts in survival.pop("bin_cuts").items()}
    survival["bin_edges"] = edges
    config = RunConfig.from_json(raw)
    assert config.survival.bin_cuts == {"survival/fold_0": (8.525, 9.85, 11.175),
                                        "survival/fold_1": (18.05, 26.7, 35.35)}
    assert "bin_edges" not in config.to_json()["survival"]


def test_a_config_written_by_hand_in_0_1_0_style_reads_with_empty_provenance():
    config = RunConfig.from_json({"model": {"name": "abmil", "hidden": 16, "dropout": 0.0},
                                  "heads": [{"name": "er", "n_outputs": 1, "kind": "binary"}],
                                  "folds": [{"fold": 0}], "in_dim": 8, "features": "toy"})
    assert (config.software, config.train, config.survival, config.manifest, config.bag_settings) == (None,) * 5
    assert config.heads[0].columns == () and config.folds[0].test == () and config.model.in_dim == 8
    assert config.survival_loss == "nll" and config.feature_attrs is None and config.tile_params is None
