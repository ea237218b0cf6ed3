"""``pathology encoders fetch``: the one command that downloads, without a network here.

``huggingface_hub.hf_hub_download`` and ``torch.hub.download_url_to_file`` are replaced by
fakes that write the file where the real ones would (the Hugging Face cache layout
``models--<org>--<name>/refs/main`` + ``snapshots/<commit>/<file>``; the torch hub
``checkpoints/`` folder), so the test checks what the command asks for, what it prints,
its exit codes, and that ``pathology encoders list`` and the loader then find the file.
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch
from typer.testing import CliRunner

from pathology.cli import app
from pathology.encoders import get_spec, locate_weights

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    """Both caches point at empty folders, and HF_TOKEN is unset unless a test sets it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import huggingface_hub.constants as hf
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


@pytest.fixture
def hub(monkeypatch):
    """A fake ``hf_hub_download`` that records its calls and writes the file into the HF cache
    the way the real one does (no cache_dir / local_dir: the default cache)."""
    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        assert not {"cache_dir", "local_dir"} & set(kwargs), "fetch must fill the default cache the loader reads"
        repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        (Path(repo) / "refs").mkdir(parents=True, exist_ok=True)
        (Path(repo) / "refs" / "main").write_text(COMMIT)
        path = Path(repo) / "snapshots" / COMMIT / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def encoders(*args, env=None):
    return CliRunner().invoke(app, ["encoders", *args], env={"COLUMNS": "500", **(env or {})})


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def listed(output: str) -> dict[str, str]:
    """``pathology encoders list``'s table rows by encoder name."""
    return {line.split("│")[1].strip(): line for line in output.splitlines() if line.count("│") > 3}


def test_a_gated_hub_model_shows_its_terms_then_lands_where_the_loader_looks(hub, empty_caches):
    assert "missing" in listed(encoders("list").output)["uni"]
    result = encoders("fetch", "uni", env={"HF_TOKEN": "hf_secret"})
    assert result.exit_code == 0, result.output
    # what was asked: the publisher's repository and file (vit.py's registry entry), with the token
    assert hub == [{"repo_id": "MahmoodLab/UNI", "filename": "pytorch_model.bin", "token": "hf_secret"}]
    text = " ".join(result.output.split())
    assert "uni is gated: accept its terms at https://huggingface.co/MahmoodLab/UNI" in text
    assert "CC-BY-NC-ND-4.0" in text
    expected = empty_caches / "hf" / "models--MahmoodLab--UNI" / "snapshots" / COMMIT / "pytorch_model.bin"
    assert f"uni: weights at {expected}" in text
    # the loader and the listing now find it, nothing else changed
    assert locate_weights(get_spec("uni")) == expected
    after = encoders("list")
    rows = listed(after.output)
    assert "found" in rows["uni"] and "missing" in rows["uni2-h"]
    assert f"uni: {expected}" in after.output


def test_an_open_hub_model_has_no_gated_notice_and_the_token_option_is_passed(hub):
    result = encoders("fetch", "h-optimus-0", "--token", "hf_cli")
    assert result.exit_code == 0, result.output
    assert hub == [{"repo_id": "bioptimus/H-optimus-0", "filename": "pytorch_model.bin", "token": "hf_cli"}]
    assert "gated" not in result.output
    assert "h-optimus-0: weights at" in result.output


def test_a_plain_url_is_downloaded_into_the_torch_hub_cache(monkeypatch, empty_caches):
    calls = []

    def download(url, dst, progress=True):
        calls.append((url, dst))
        with open(dst, "wb") as fh:
            fh.write(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    result = encoders("fetch", "resnet50-trunc")
    assert result.exit_code == 0, result.output
    expected = empty_caches / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    # torchvision's published ImageNet checkpoint (cnn.py's registry entry)
    assert calls == [("https://download.pytorch.org/models/resnet50-0676ba61.pth", str(expected))]
    assert "gated" not in result.output and f"resnet50-trunc: weights at {expected}" in " ".join(result.output.split())
    assert "found" in listed(encoders("list").output)["resnet50-trunc"]
    assert locate_weights(get_spec("resnet50-trunc")) == expected


@pytest.mark.parametrize("name", ["stain-texture", "default"])
def test_a_built_in_encoder_has_nothing_to_fetch(hub, name):
    result = encoders("fetch", name)
    assert result.exit_code == 0, result.output
    assert lines(result.output) == ["stain-texture has no weights to fetch (its parameters are built in)"]
    assert hub == []


def test_an_unknown_name_is_one_line_and_exit_2(hub):
    result = encoders("fetch", "uni3")
    assert result.exit_code == 2, result.output
    (line,) = lines(result.output)
    assert line.startswith("error: unknown encoder 'uni3'; choose from ") and "uni2-h" in line
    assert hub == []


def test_a_download_error_is_one_line_with_its_cause_and_exit_1(monkeypatch, empty_caches):
    def refused(repo_id, filename, **kwargs):
        raise OSError("401 Client Error.\nCannot access gated repo for url https://huggingface.co/"
                      f"{repo_id}/resolve/main/{filename}.\nAccess to model {repo_id} is restricted.")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    result = encoders("fetch", "virchow2")
    assert result.exit_code == 1, result.output
    out = lines(result.output)
    notice, error = [line for line in out if "gated" in line and "accept" in line], [
        line for line in out if line.startswith("error:")]
    assert len(notice) == 1 and len(out) == 2, result.output  # the notice, then one error line
    (error,) = error
    assert error.startswith("error: fetching virchow2 failed: 401 Client Error. Cannot access gated repo")
    assert "Access to model paige-ai/Virchow2 is restricted" in error
    assert "Traceback" not in result.output
    assert "missing" in listed(encoders("list").output)["virchow2"]   # nothing half-written counts as found
