"""The encoder registry: every entry builds to its documented dimension, weights load as
publishers distribute them (and only then), pickles that run code are refused."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet50

from pathology.encoders import ENCODERS, WeightsError, get_spec, load_encoder, read_checkpoint
from pathology.encoders.adapters import fit_pos_embed, hf_dinov2_to_timm
from pathology.errors import InputError

EXPECTED = {"resnet50-trunc": 1024, "uni": 1024, "uni2-h": 1536, "conch-v1.5": 768, "virchow2": 2560,
            "h-optimus-0": 1536, "prov-gigapath": 1536, "phikon-v2": 1024}


def patches(n: int = 4, size: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, 3), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    """No test may find (or fetch) real weights: point both caches at empty folders."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as hf
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))


def test_the_registry_holds_the_encoders_users_expect():
    assert set(EXPECTED) | {"stain-texture"} <= set(ENCODERS)
    for name, spec in ENCODERS.items():
        assert spec.weights.licence and spec.architecture and spec.description, name
        assert spec.weights.needed == (name != "stain-texture")
    assert get_spec("default").name == "stain-texture"
    with pytest.raises(InputError, match="resnet50-trunc"):
        get_spec("resnet51")


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"resnet50-trunc"}))
def test_foundation_model_architectures_map_to_their_documented_dimension(name):
    """Built on the meta device: shapes without allocating a billion parameters."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = spec.build()
        out = model(torch.empty(2, 3, spec.input_size, spec.input_size))
    assert spec.dim == EXPECTED[name] and tuple(out.shape) == (2, spec.dim)


@pytest.mark.parametrize("name", ["resnet50-trunc", "stain-texture"])
def test_cpu_encoders_embed_a_batch_deterministically(name):
    torch.manual_seed(0)
    encoder = load_encoder(name, random_weights=name != "stain-texture", device="cpu")
    batch = patches()
    first, second = encoder(batch), encoder(batch)
    assert first.shape == (4, encoder.spec.dim) and first.dtype == torch.float32
    assert torch.isfinite(first).all() and torch.equal(first, second)
    assert encoder.precision == "fp32"  # bf16 autocast is much slower on CPUs like this one


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_checkpoint_the_test_writes_reproduces_the_features(tmp_path, suffix):
    torch.manual_seed(1)
    original = load_encoder("resnet50-trunc", random_weights=True, device="cpu")
    state = {k: v.contiguous() for k, v in original.model.state_dict().items()}
    path = tmp_path / f"trunk{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    torch.manual_seed(2)  # a different random init, overwritten by the checkpoint
    loaded = load_encoder("resnet50-trunc", weights=path, device="cpu")
    batch = patches(seed=3)
    assert torch.equal(loaded(batch), original(batch))
    assert len(loaded.weights_sha256) == 64 and loaded.feature_attrs()["weights_sha256"] == loaded.weights_sha256


def test_torchvision_imagenet_checkpoint_loads_with_layer4_and_fc_dropped(tmp_path):
    """The file users have (torchvision's resnet50-0676ba61.pth layout): the truncation
    drops layer4 and fc explicitly; everything else must match."""
    full = resnet50(weights=None)
    torch.save(full.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    encoder = load_encoder("resnet50-trunc", weights=tmp_path / "resnet50-0676ba61.pth", device="cpu")
    assert torch.equal(encoder.model.layer3[0].conv1.weight, full.layer3[0].conv1.weight)
    # a wrapped training checkpoint (DataParallel prefix inside "state_dict") loads the same way
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}, "epoch": 3},
               tmp_path / "wrapped.pth")
    wrapped = load_encoder("resnet50-trunc", weights=tmp_path / "wrapped.pth", device="cpu")
    assert torch.equal(wrapped.model.conv1.weight, full.conv1.weight)


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("layer3.5.bn3.running_var"), "1 missing (e.g. layer3.5.bn3.running_var)"),
    (lambda s: s.__setitem__("head.weight", torch.zeros(2)), "1 unexpected (e.g. head.weight)"),
    (lambda s: s.__setitem__("conv1.weight", torch.zeros(64, 3, 3, 3)), "1 wrong shape"),
])
def test_a_checkpoint_that_does_not_fit_fails_clearly(tmp_path, change, words):
    state = resnet50(weights=None).state_dict()
    change(state)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="does not fit resnet50-trunc") as err:
        load_encoder("resnet50-trunc", weights=tmp_path / "bad.safetensors", device="cpu")
    assert words in str(err.value) and "\n" not in str(err.value)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Exploit(marker)}, f)
    torch.save({"conv1.weight": Exploit(marker)}, tmp_path / "evil_zip.pth")
    for p in (path, tmp_path / "evil_zip.pth"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's pickle-protocol warning is not shown to the user
            with pytest.raises(WeightsError, match="refused to load: it holds pickled objects other than tensors") \
                    as info:
                read_checkpoint(p)
        assert "weights_only" not in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_missing_weights_name_the_file_and_both_ways_to_provide_it():
    with pytest.raises(WeightsError) as err:
        load_encoder("uni", device="cpu")
    message = str(err.value)
    assert "pytorch_model.bin" in message and "models--MahmoodLab--UNI" in message
    assert "--weights FILE" in message and "pathology encoders fetch uni" in message and "\n" not in message
    with pytest.raises(WeightsError, match="resnet50-0676ba61.pth"):
        load_encoder("resnet50-trunc", device="cpu")
    with pytest.raises(WeightsError, match="no such weights file"):
        load_encoder("resnet50-trunc", weights="/nonexistent/w.pth", device="cpu")


def test_weights_in_the_local_torch_cache_are_found(tmp_path):
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(resnet50(weights=None).state_dict(), checkpoints / "resnet50-0676ba61.pth")
    assert load_encoder("resnet50-trunc", device="cpu").weights_path == checkpoints / "resnet50-0676ba61.pth"


def test_encoders_list_shows_which_weights_are_found(tmp_path):
    from typer.testing import CliRunner

    from pathology.cli import app

    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet50-0676ba61.pth").write_bytes(b"placeholder")
    result = CliRunner().invoke(app, ["encoders", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert set(EXPECTED) | {"stain-texture"} <= set(rows)
    assert "found" in rows["resnet50-trunc"] and "missing" in rows["uni"] and "built in" in rows["stain-texture"]
    assert f"resnet50-trunc: {checkpoints / 'resnet50-0676ba61.pth'}" in result.output
    assert "pathology encoders fetch NAME" in result.output


def test_hugging_face_dinov2_keys_convert_to_timm(tmp_path):
    """Phikon-v2 ships transformers ``Dinov2Model`` keys; the adapter maps them (q/k/v
    concatenated, mask token dropped) so a small ViT reproduces its own outputs."""
    import timm
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64, init_values=1e-5)
    hf: dict[str, torch.Tensor] = {"embeddings.cls_token": vit.cls_token, "embeddings.mask_token": torch.zeros(1, 192),
                                   "embeddings.position_embeddings": vit.pos_embed,
                                   "embeddings.patch_embeddings.projection.weight": vit.patch_embed.proj.weight,
                                   "embeddings.patch_embeddings.projection.bias": vit.patch_embed.proj.bias,
                                   "layernorm.weight": vit.norm.weight, "layernorm.bias": vit.norm.bias}
    for i, block in enumerate(vit.blocks):
        pre = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = getattr(block.attn.qkv, kind).chunk(3)
            hf.update({pre + f"attention.attention.query.{kind}": q, pre + f"attention.attention.key.{kind}": k,
                       pre + f"attention.attention.value.{kind}": v,
                       pre + f"attention.output.dense.{kind}": getattr(block.attn.proj, kind),
                       pre + f"norm1.{kind}": getattr(block.norm1, kind),
                       pre + f"norm2.{kind}": getattr(block.norm2, kind),
                       pre + f"mlp.fc1.{kind}": getattr(block.mlp.fc1, kind),
                       pre + f"mlp.fc2.{kind}": getattr(block.mlp.fc2, kind)})
        hf[pre + "layer_scale1.lambda1"], hf[pre + "layer_scale2.lambda1"] = block.ls1.gamma, block.ls2.gamma
    fresh = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64, init_values=1e-5)
    fresh.load_state_dict(hf_dinov2_to_timm({k: v.detach().clone() for k, v in hf.items()}, fresh), strict=True)
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(fresh.eval()(x), vit.eval()(x))


def test_position_grid_is_resampled_for_another_input_size():
    """CONCH v1.5 runs at 448 px; a checkpoint saved at another grid is resampled, not rejected."""
    import timm
    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    big = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64)
    adapted = fit_pos_embed()(small.state_dict(), big)
    assert adapted["pos_embed"].shape == big.pos_embed.shape != small.pos_embed.shape
    big.load_state_dict(adapted, strict=True)


def test_device_and_precision_selection():
    from pathology.encoders import select_device, select_precision
    assert select_device("auto").type in ("cuda", "mps", "cpu")
    spec = get_spec("uni")
    assert select_precision(spec, torch.device("cpu")) == "fp32"
    assert select_precision(spec, torch.device("cpu"), "bf16") == "bf16"
    with pytest.raises(InputError, match="precision"):
        select_precision(spec, torch.device("cpu"), "int4")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            select_device("cuda")
