"""Encoders without code: `-e FOLDER` with a config.json (timm architecture, input size, mean, std,
pooling, safetensors weights). The features are checked against timm's own forward pass of the
same weights (a second implementation); bad configs fail in one line naming the file and field."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from pathology.bag import read_patches
from pathology.cli import app
from pathology.encoders import WeightsError, get_spec, load_encoder
from pathology.encoders.local import EncoderConfigError, local_spec
from pathology.synth import SynthConfig, write_synthetic_slide
from tests.factories import write_bag

runner = CliRunner()
ARCH = "test_vit"  # timm's 0.3 M-parameter ViT (160 px, 64-d tokens)


def make_folder(root: Path, config: dict | None = None, *, head: bool = True, seed: int = 0,
                arch: str = ARCH, weights: str = "model.safetensors") -> Path:
    """An encoder folder: random weights of ``arch`` as a classifier checkpoint (with its head,
    as publishers distribute them) and a config.json."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=5 if head else 0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / weights))
    base = {"architecture": arch, "input_size": 160, "mean": [0.5, 0.6, 0.7], "std": [0.2, 0.25, 0.3],
            "pooling": "token", "weights": weights}
    (root / "config.json").write_text(json.dumps(base if config is None else config))
    return root


def timm_features(folder: Path, patches: np.ndarray, pooling: str = "token") -> np.ndarray:
    """The truth: timm's own model with the checkpoint loaded by timm (head and all), its
    pre-logits features of the patches normalized with the config's mean and std."""
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    model = timm.create_model(config["architecture"], num_classes=5, global_pool=pooling).eval()
    model.load_state_dict(load_file(str(folder / config.get("weights", "model.safetensors"))))
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(160, 160), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(config["mean"]).view(1, 3, 1, 1)) / torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy()


def test_features_are_timms_features_of_the_same_weights(tmp_path, one_torch_thread):
    folder = make_folder(tmp_path / "my-vit")
    encoder = load_encoder(str(folder), device="cpu")
    assert encoder.spec.name == "my-vit" and encoder.spec.dim == 64 and encoder.spec.input_size == 160
    assert encoder.spec.mean == (0.5, 0.6, 0.7) and encoder.weights_path == folder / "model.safetensors"
    patches = np.random.default_rng(1).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    ours = encoder(torch.from_numpy(patches)).numpy()
    np.testing.assert_allclose(ours, timm_features(folder, patches), atol=1e-4)
    assert get_spec(str(folder)) is encoder.spec  # registered once, found again by folder


def test_embed_command_writes_the_folders_features(tmp_path, one_torch_thread):
    folder = make_folder(tmp_path / "enc", {"architecture": ARCH, "input_size": [3, 160, 160], "mean": [0.5] * 3,
                                            "std": [0.5] * 3, "pooling": "token", "name": "lab-vit"})
    truth = write_synthetic_slide(tmp_path / "s1.svs", SynthConfig(width=2048, height=1536, mpp=0.5, seed=1))
    assert runner.invoke(app, ["tile", str(truth.slide), "--out", str(tmp_path / "bags"), "--patch-size", "64",
                               "-q"]).exit_code == 0
    bag = tmp_path / "bags" / "s1.h5"
    with h5py.File(bag) as f:
        n = len(f["coords"])
    assert n > 5
    result = runner.invoke(app, ["embed", str(bag), "-e", str(folder), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    with h5py.File(bag) as f:
        features = f["features/lab-vit"]
        assert features.shape == (n, 64) and features.attrs["input_size"] == 160
        assert list(features.attrs["mean"]) == [0.5] * 3
        np.testing.assert_allclose(features[:], timm_features(folder, read_patches(f, slice(None))), atol=1e-4)


def test_a_timm_hub_folder_works_as_it_is(tmp_path):
    """timm's Hugging Face layout: input size, mean and std in pretrained_cfg, pooling as global_pool."""
    model = timm.create_model(ARCH, pretrained=False)
    folder = make_folder(tmp_path / "hub", {"architecture": ARCH, "num_classes": 5, "num_features": 64,
                                            "global_pool": "token", "pretrained_cfg": dict(model.pretrained_cfg)})
    spec = local_spec(folder)
    assert (spec.input_size, spec.mean, spec.std, spec.dim) == (160, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 64)


GOOD = {"architecture": ARCH, "input_size": 160, "mean": [0.5] * 3, "std": [0.5] * 3, "pooling": "token",
        "weights": "model.safetensors"}


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"architecture": None}, "architecture", "missing"),
    ({"architecture": "no_such_net"}, "architecture", "timm has no architecture 'no_such_net'"),
    ({"input_size": "big"}, "input_size", "must be a side in pixels"),
    ({"mean": [0.5, 0.5]}, "mean", "must be three numbers"),
    ({"std": [0.5, 0, 0.5]}, "std", "must be three positive numbers"),
    ({"pooling": ""}, "pooling", "not one vector per patch"),
    ({"pooling": "median"}, "pooling", "timm cannot build and run it"),
    ({"weights": "model.pth"}, "weights", "must name a .safetensors file"),
    ({"weights": "other.safetensors"}, "weights", "no such file"),
    ({"poling": "avg"}, "poling", "unknown field"),
    ({"name": "resnet50-trunc"}, "name", "is already another encoder's name"),
])
def test_a_bad_config_is_one_line_naming_file_and_field(tmp_path, change, field, message):
    config = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    folder = make_folder(tmp_path / "bad", config)
    result = runner.invoke(app, ["embed", str(write_bag(tmp_path / "b.h5", np.zeros((2, 4)))), "-e", str(folder)])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert f"error: {folder / 'config.json'}: field {field!r}: " in line and message in line
    with pytest.raises(EncoderConfigError):
        get_spec(str(folder))


def test_weights_follow_the_built_in_rules(tmp_path):
    # a pickled checkpoint, even named .safetensors, is not read (safetensors refuses it)
    folder = make_folder(tmp_path / "pickled", GOOD)
    torch.save({"x": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_encoder(str(folder), device="cpu")
    # tensors of another architecture: never a partial load
    other = make_folder(tmp_path / "other", arch="resnet10t")
    wrong = make_folder(tmp_path / "wrong", GOOD)
    (other / "model.safetensors").replace(wrong / "model.safetensors")
    with pytest.raises(WeightsError, match="does not fit wrong .timm test_vit.*missing"):
        load_encoder(str(wrong), device="cpu")
    # a folder without a config says what it needs; an unknown name lists the choices
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["embed", str(write_bag(tmp_path / "b.h5", np.zeros((2, 4)))), "-e",
                                 str(tmp_path / "empty")])
    assert result.exit_code == 2 and "an encoder folder needs a config.json" in " ".join(result.output.split())
    result = runner.invoke(app, ["embed", str(tmp_path / "b.h5"), "-e", "nope"])
    assert result.exit_code == 2 and "unknown encoder 'nope'" in result.output
