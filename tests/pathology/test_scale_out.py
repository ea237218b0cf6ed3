"""The batch commands on Ray give what they give locally; claims keep two drivers off one slide;
a killed driver's rerun ends as a clean run would (issue 13)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pathology.batch import run_batch
from pathology.cli import app
from pathology.executors import LocalExecutor
from pathology.inputs import expand_inputs
from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.tiling.pipeline import TileOptions
from pathology.tiling.stage import tile_stage
from tests.factories import bag_content

pytest.importorskip("ray", reason="the ray extra")  # CI installs it with .[test]

runner = CliRunner()


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for i in range(4):
        write_synthetic_slide(folder / f"s{i}.svs", SynthConfig(width=2048, height=1536, mpp=0.5, seed=10 + i))
    return folder


@pytest.fixture
def eight(slides, tmp_path) -> Path:
    """Eight slides (copies of the four): a batch long enough to interrupt."""
    many = tmp_path / "slides"
    many.mkdir()
    for i in range(8):
        shutil.copy(slides / f"s{i % 4}.svs", many / f"c{i}.svs")
    return many



def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith((".partial", ".claim", ".old")))


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def test_ray_tiles_embeds_and_runs_as_local_does(slides, tmp_path, local_ray, data):
    batch = [*sorted(slides.glob("*.svs")), data / "histolab" / "broken.svs"]
    for name in ("local", "ray"):
        result = invoke("tile", *batch, "--out", tmp_path / name, "--executor", name, "--target-mpp", "1.0",
                        "--patch-size", "128")
        assert result.exit_code == 1, result.output  # the broken slide fails alone
        with open(tmp_path / name / "status.csv", newline="") as fh:
            rows = {r["slide_id"]: r["status"] for r in csv.DictReader(fh)}
        assert rows == {"s0": "done", "s1": "done", "s2": "done", "s3": "done", "broken": "failed"}
        result = invoke("embed", tmp_path / name, "--executor", name)
        assert result.exit_code == 0, result.output
    for i in range(4):
        local, remote = bag_content(tmp_path / "local" / f"s{i}.h5"), bag_content(tmp_path / "ray" / f"s{i}.h5")
        features = "features/stain-texture"
        assert np.allclose(np.frombuffer(local.pop(features), np.float16),
                           np.frombuffer(remote.pop(features), np.float16), atol=1e-3)
        assert local == remote  # tiling byte-identical, feature attrs identical
    assert leftovers(tmp_path) == []


def test_no_ray_is_one_line_and_exit_2(slides, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = invoke("tile", slides, "--out", tmp_path, "--executor", "ray")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --executor ray needs Ray: pip install 'pathology-mil[ray]' (core Ray only)"


def test_two_drivers_on_one_output_tile_each_slide_once(slides, tmp_path):
    out = tmp_path / "bags"
    stage = tile_stage(out, TileOptions(), threads=1)
    batch = expand_inputs([str(slides)])
    results: dict[str, list] = {}

    def driver(name: str) -> None:
        results[name] = run_batch(batch, stage, executor=LocalExecutor(), status=out / f"status.{name}.csv")

    threads = [threading.Thread(target=driver, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in batch:
        statuses = sorted(o.status for r in results.values() for o in r if o.slide_id == s.slide_id)
        assert statuses in (["busy", "done"], ["done", "skipped"]), (s.slide_id, statuses)  # tiled once
    assert leftovers(out) == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_driver_is_rerun_to_the_clean_result(eight, tmp_path):
    many = eight
    clean = tmp_path / "clean"
    assert invoke("tile", many, "--out", clean, "--stain", "macenko").exit_code == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from pathology.cli import app; app()", "tile", str(many), "--out", str(out),
           "--stain", "macenko"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path.cwd())
    deadline = time.time() + 300
    while not list(out.glob("*.h5")) and time.time() < deadline:  # at least one bag done, more under way
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(out.glob("*.h5"))) < 8, "the run finished before it could be killed"
    result = invoke("tile", many, "--out", out, "--stain", "macenko")
    assert result.exit_code == 0, result.output
    assert leftovers(out) == []
    for i in range(8):
        assert bag_content(out / f"c{i}.h5") == bag_content(clean / f"c{i}.h5")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_cluster_losing_a_node_mid_batch_still_finishes_every_slide(eight, tmp_path):
    many = eight
    out = tmp_path / "bags"
    done = subprocess.run([sys.executable, "-m", "tests.pathology.cluster_batch", str(many), str(out)],
                          capture_output=True, text=True, timeout=800, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"statuses"')))
    assert report["nodes_alive"] == 1  # the worker node was lost
    # every slide finished; "skipped" where the lost node had published the bag before it died
    assert set(report["statuses"]) == {f"c{i}" for i in range(8)}
    assert set(report["statuses"].values()) <= {"done", "skipped"}, report
    clean = tmp_path / "clean"
    assert invoke("tile", many, "--out", clean, "--stain", "macenko").exit_code == 0
    for i in range(8):
        assert bag_content(out / f"c{i}.h5") == bag_content(clean / f"c{i}.h5")


def test_pathology_run_on_ray_streams_the_three_stages_to_the_local_results(slides, tmp_path, local_ray, data):
    """The checked-in 0.1.0 run (stain-texture features, default tiling) applied on both executors;
    on this 2-CPU instance the embedding worker and the tiling tasks must share the CPUs."""
    run = data / "runs" / "mil-run-0.1.0"
    scores = {}
    for name in ("local", "ray"):
        out = tmp_path / name
        result = invoke("run", slides / "s0.svs", slides / "s1.svs", "--model", run, "--out", out,
                        "--executor", name)
        assert result.exit_code == 0, result.output
        with open(out / "results.csv", newline="") as fh:
            scores[name] = {r["slide_id"]: (r["status"], float(r["tumor_score"]), float(r["survival_risk"]))
                            for r in csv.DictReader(fh)}
        assert leftovers(out) == []
    assert scores["ray"].keys() == scores["local"].keys() == {"s0", "s1"}
    for sid, (status, tumor, risk) in scores["local"].items():
        assert status == "done" and scores["ray"][sid][0] == "done"
        assert scores["ray"][sid][1:] == pytest.approx((tumor, risk), abs=1e-4)  # float16 features either way
