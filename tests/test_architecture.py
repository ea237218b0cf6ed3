"""The shape of the code base (docs/architecture.md): commands load lazily, tiling never loads
the model side, flags mean one thing everywhere, and the version is printed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import mil.cli
import pathology.cli
from pathology import __version__

runner = CliRunner()


def loaded_modules(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_help_loads_no_command():
    loaded = loaded_modules("from typer.testing import CliRunner; from pathology.cli import app; "
                            "assert CliRunner().invoke(app, ['--help']).exit_code == 0")
    assert not {m for m in loaded if m.startswith("pathology.cli.") and m not in ("pathology.cli.lazy",)}
    assert "torch" not in loaded and "mil" not in loaded


def test_tiling_never_loads_torch_timm_or_mil():
    loaded = loaded_modules("import pathology.cli.tile")
    assert "pathology.tiling.pipeline" in loaded  # the probe sees real imports
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "timm", "torchvision", "mil")}


def test_every_command_loads_and_has_help():
    for app, names in ((pathology.cli.app, pathology.cli.COMMANDS), (mil.cli.app, mil.cli.COMMANDS)):
        for name in names:
            result = runner.invoke(app, [name, "--help"])
            assert result.exit_code == 0, (name, result.output)


@pytest.mark.parametrize("app", [pathology.cli.app, mil.cli.app])
def test_version(app):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"pathology-mil {__version__}"


def option_names(app, command: str) -> dict[str, set[str]]:
    """Each parameter's flags for ``app command``: {'--model': {'--model', '-m'}, ...}."""
    group = __import__("typer").main.get_command(app)
    cmd = group.load(command) if hasattr(group, "load") else group.commands[command]
    return {opt: set(p.opts) for p in cmd.params if not p.hidden for opt in p.opts if opt.startswith("--")}


def test_a_short_flag_means_one_thing_everywhere():
    meaning: dict[str, set[str]] = {}
    for app, names in ((pathology.cli.app, pathology.cli.COMMANDS), (mil.cli.app, mil.cli.COMMANDS)):
        for name in names:
            if name == "encoders":
                continue
            for long, flags in option_names(app, name).items():
                for short in (f for f in flags if not f.startswith("--")):
                    meaning.setdefault(short, set()).add(long)
    clashes = {short: longs for short, longs in meaning.items() if len(longs) > 1}
    assert not clashes, clashes
    assert meaning["-m"] == {"--model"} and meaning["-t"] == {"--target"} and meaning["-o"] == {"--out"}


def test_model_is_a_run_folder_and_the_architecture_is_arch():
    assert "--arch" in option_names(mil.cli.app, "train") and "--model" not in option_names(mil.cli.app, "train")
    for app, name in ((pathology.cli.app, "run"), (pathology.cli.app, "heatmap"), (mil.cli.app, "predict")):
        assert option_names(app, name)["--model"] == {"--model", "-m"}


def test_old_spellings_still_work_with_a_warning(tmp_path):
    result = runner.invoke(pathology.cli.app, ["ihc", str(tmp_path / "none.svs"), "-m", "ki67", "--out",
                                               str(tmp_path)])
    assert "pathology ihc -m is deprecated" in result.output and "use --marker" in result.output
    assert result.exit_code == 2 and "no such file" in result.output  # the marker was taken, the input is bad
    result = runner.invoke(pathology.cli.app, ["ihc", str(tmp_path / "none.svs"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--marker is required" in result.output


def test_demo_exits_2_on_bad_input(tmp_path):
    result = runner.invoke(pathology.cli.app, ["demo", "--arch", "no-such-model", "--out", str(tmp_path)])
    assert result.exit_code == 2
