"""The batch runner and the command lines around it: a user's problem is one line, a bug is
reported as a bug (with its traceback under -v), status.csv follows the batch, exit codes."""

from __future__ import annotations

import csv
import errno

import pytest
from typer.testing import CliRunner

from pathology.batch import Outcome, run_batch, run_one, status_path, summary_table
from pathology.cli import app
from pathology.errors import InputError, UserError, describe, is_user_fixable
from pathology.inputs import SlideInput
from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.tiling import pipeline

runner = CliRunner()


def read_status(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    for name in ("a", "b"):
        write_synthetic_slide(folder / f"{name}.svs", SynthConfig(width=1024, height=768, mpp=0.5, seed=1))
    return folder


def test_user_errors_and_environment_errors_are_one_line_anything_else_is_a_bug():
    assert is_user_fixable(InputError("bad.csv row 3: empty slide_id"))
    assert is_user_fixable(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_user_fixable(ValueError("operands could not be broadcast"))
    assert not is_user_fixable(OSError("Unable to synchronously open file"))  # an errno-less h5py failure
    assert describe(InputError("x.svs: no µm/px")) == "x.svs: no µm/px"
    assert describe(ZeroDivisionError("division by zero")) == "bug: ZeroDivisionError: division by zero"


def _job(slide: SlideInput, advance) -> Outcome:
    if slide.slide_id == "user":
        raise UserError(f"{slide.path}: not a slide")
    if slide.slide_id == "bug":
        return [][1]  # an IndexError in our own code
    return Outcome(slide.slide_id, "done", 3, 0.1, "fine")


def test_run_one_marks_bugs_and_keeps_their_traceback(tmp_path):
    user = run_one(_job, SlideInput("user", tmp_path / "u.svs"))
    assert (user.status, user.bug, user.traceback) == ("failed", False, "")
    assert user.message == f"{tmp_path / 'u.svs'}: not a slide"
    bug = run_one(_job, SlideInput("bug", tmp_path / "b.svs"))
    assert bug.status == "failed" and bug.bug and bug.message.startswith("bug: IndexError")
    assert "return [][1]" in bug.traceback


def test_status_csv_lists_every_slide_and_is_rewritten_after_each(tmp_path):
    slides = [SlideInput(n, tmp_path / f"{n}.svs") for n in ("ok", "user", "bug")]
    seen = []

    def job(slide, advance):
        seen.append(read_status(tmp_path / "status.csv"))
        return _job(slide, advance)

    outcomes = run_batch(slides, job, status=status_path(tmp_path))
    # before the first slide every row is pending; before the second, the first is done
    assert [r["status"] for r in seen[0]] == ["pending"] * 3
    assert [r["status"] for r in seen[1]] == ["done", "pending", "pending"]
    rows = read_status(tmp_path / "status.csv")
    assert list(rows[0]) == ["slide_id", "status", "seconds", "count", "message"]
    assert [(r["slide_id"], r["status"], r["count"]) for r in rows] == [("ok", "done", "3"), ("user", "failed", "0"),
                                                                         ("bug", "failed", "0")]
    assert rows[2]["message"].startswith("bug: IndexError")
    caption = summary_table(outcomes).caption
    assert "1 done" in caption and "2 failed" in caption and "1 by a bug" in caption


def test_a_shard_writes_its_own_status_file(tmp_path):
    assert status_path(tmp_path, (2, 5)).name == "status.shard-2-of-5.csv"
    assert status_path(tmp_path, None, stem="status.embed").name == "status.embed.csv"


def test_an_injected_bug_is_reported_as_a_bug_not_as_bad_input(tmp_path, slides, monkeypatch):
    real = pipeline.tile_slide

    def broken(path, slide_id, *args, **kwargs):
        if slide_id == "b":
            raise ZeroDivisionError("float division by zero")
        return real(path, slide_id, *args, **kwargs)

    monkeypatch.setattr(pipeline, "tile_slide", broken)
    out = tmp_path / "bags"
    result = runner.invoke(app, ["tile", str(slides), "--out", str(out)])
    assert result.exit_code == 1, result.output  # a failed slide, not exit 2 (bad input)
    assert "bug: ZeroDivisionError: float division by zero" in result.output
    assert "report it" in result.output and "Traceback" not in result.output
    rows = {r["slide_id"]: r for r in read_status(out / "status.csv")}
    assert rows["a"]["status"] == "done" and rows["b"]["status"] == "failed"
    # -v prints the traceback
    verbose = runner.invoke(app, ["tile", str(slides), "--out", str(tmp_path / "v"), "-v"])
    assert verbose.exit_code == 1 and "Traceback" in verbose.output and "broken" in verbose.output


def test_bad_input_is_one_line_and_exit_2(tmp_path, slides):
    result = runner.invoke(app, ["tile", str(slides), "--out", str(tmp_path), "--shard", "3/2"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --shard takes i/n")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "status.csv").exists()  # nothing was started
