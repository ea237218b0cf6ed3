"""The examples run as users will run them (the fast one end to end; the shell ones parse)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.timeout(900)   # ~1 min alone on 2 cores; longer than the example's own 600-s limit below
def test_features_made_by_clam_or_trident_train_and_predict(tmp_path):
    out = tmp_path / "clam"
    done = subprocess.run([sys.executable, str(EXAMPLES / "clam_trident_features.py"), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["tasks"]["er"]["metrics"]["auc"]["pooled"] > 0.6        # the planted signal is found
    predictions = pd.read_csv(out / "predictions" / "predictions.csv")
    assert len(predictions) == 30 and predictions["score"].between(0, 1).all()


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.sh")))
def test_shell_examples_are_valid_bash_using_real_commands(script):
    text = (EXAMPLES / script).read_text()
    assert subprocess.run(["bash", "-n", str(EXAMPLES / script)]).returncode == 0
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    from mil.cli import COMMANDS as MIL
    from pathology.cli import COMMANDS as PATHOLOGY
    commands = {"pathology": set(PATHOLOGY), "mil": set(MIL)}
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in commands:
            assert words[1] in commands[words[0]], f"{script}: unknown command {words[0]} {words[1]}"
