"""Fault injection (issue 12, docs/reliability.md): a full disk, corrupt tiles, kill -9, a slide
changed in place and the smaller cases. Each fault is reported in one line naming the file, the
rest of the batch goes on, nothing already written is damaged or silently wrong, and nothing is
left behind.

The full disk is a real one, a small tmpfs mounted for the test (as root, where mounting is
allowed; an injected ENOSPC otherwise). Commands whose exit code must show that the process did
not crash (a segfault is exit -11) run in a fresh process, as a user runs them.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import tifffile
from typer.testing import CliRunner

from pathology.bag import read_attrs
from pathology.cli import app
from pathology.fingerprint import BLOCK, EDGE, SAMPLES, fingerprint, legacy_fingerprint, sample_offsets
from pathology.slide import open_slide
from pathology.synth import SynthConfig, write_synthetic_slide
from pathology.tissue import TissueParams
from tests.factories import bag_content, stored_patches

ROOT = Path(__file__).parents[2]
runner = CliRunner()


# --- helpers ------------------------------------------------------------------------------------------------------
def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"}  # a log line stays on one line


def command(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """`pathology ARGS` in a fresh process (its exit code shows a crash: -11 for a segfault)."""
    env = ENV
    return subprocess.run([sys.executable, "-c", "from pathology.cli import app; app()", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def statuses(path: Path) -> dict[str, dict]:
    with open(path, newline="") as fh:
        return {r["slide_id"]: r for r in csv.DictReader(fh)}


def hidden(folder: Path) -> list[str]:
    """Every hidden file or folder under ``folder``: temporary files, staged copies, claims."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))



@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """Two synthetic SVS slides: 'big' and 'small' (bags of ~17 and ~4 MB with raw patches, ~8x smaller as JPEG)."""
    folder = tmp_path_factory.mktemp("slides")
    write_synthetic_slide(folder / "big.svs", SynthConfig(width=3072, height=2048, mpp=0.5, seed=2))
    write_synthetic_slide(folder / "small.svs", SynthConfig(width=2048, height=1536, mpp=0.5, seed=10))
    return folder


@pytest.fixture(scope="module")
def clean(slides, tmp_path_factory) -> Path:
    """The slides tiled on a roomy disk: the reference every faulty run is compared with."""
    out = tmp_path_factory.mktemp("clean")
    assert invoke("tile", slides / "big.svs", slides / "small.svs", "--out", out).exit_code == 0
    return out


class Disk:
    """Small tmpfs file systems mounted for a test and unmounted after it."""

    def __init__(self, root: Path):
        self.root, self.mounted = root, []

    def __call__(self, size: int, read_only: bool = False) -> Path:
        folder = self.root / f"disk{len(self.mounted)}"
        folder.mkdir()
        options = f"size={max(size, 4096) // 4096 * 4096}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        self.mounted.append(folder)
        return folder

    def unmount(self) -> None:
        for folder in self.mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def disk(tmp_path):
    made = Disk(tmp_path)
    yield made
    made.unmount()


# --- a full disk --------------------------------------------------------------------------------------------------
def footprint(folder: Path, name: str) -> int:
    """Bytes a slide's outputs take: its bag and QC picture."""
    return (folder / f"{name}.h5").stat().st_size + (folder / "qc" / f"{name}.png").stat().st_size


@pytest.mark.parametrize("share", [0.05, 0.5, 0.9, 0.98])
def test_a_full_disk_fails_one_slide_in_one_line_and_the_batch_goes_on(slides, clean, disk, tmp_path, share):
    """The disk holds the big slide's previous (coordinates-only) bag and room for ``share`` of
    its new outputs (at least for the small slide's): the big slide fails wherever its writing
    hits the full disk (patches, overview, closing, QC picture), the small one after it is
    written in the room the failure left, and the previous bag and picture are untouched."""
    roomy = tmp_path / "roomy"
    assert invoke("tile", slides / "big.svs", "--out", roomy, "--no-patches").exit_code == 0
    room = footprint(roomy, "big") + max(int(share * footprint(clean, "big")), footprint(clean, "small"))
    out = disk(room + (32 << 10)) / "bags"  # + status files and folders
    before = command("tile", slides / "big.svs", "--out", out, "--no-patches")  # the previous version
    assert before.returncode == 0, before.stderr
    previous = (out / "big.h5").read_bytes(), (out / "qc" / "big.png").read_bytes()

    done = command("tile", slides / "big.svs", slides / "small.svs", "--out", out)
    assert done.returncode == 1, done.stderr[-3000:]  # a failed slide, not a crash
    rows = statuses(out / "status.csv")
    assert rows["big"]["status"] == "failed" and rows["small"]["status"] == "done"
    assert rows["big"]["message"] in (f"cannot write {out / 'big.h5'}: the disk is full (no space left on device)",
                                      f"cannot write {out / 'qc' / 'big.png'}: the disk is full (no space left "
                                      "on device)")
    assert "HDF5" not in done.stderr and "errno" not in done.stderr
    assert ((out / "big.h5").read_bytes(), (out / "qc" / "big.png").read_bytes()) == previous
    assert bag_content(out / "small.h5") == bag_content(clean / "small.h5")
    assert hidden(out) == []


def test_embedding_on_a_full_disk_keeps_the_bag_and_goes_on(clean, disk):
    big, small = clean / "big.h5", clean / "small.h5"
    # room for both bags and a staged copy of the small one (with its features) only
    slack = 256 << 10
    assert big.stat().st_size > small.stat().st_size + slack   # so the big one's copy cannot fit
    folder = disk(big.stat().st_size + 2 * small.stat().st_size + slack)
    shutil.copy(big, folder / "big.h5")
    shutil.copy(small, folder / "small.h5")
    before = (folder / "big.h5").read_bytes()
    done = command("embed", folder / "big.h5", folder / "small.h5")
    assert done.returncode == 1, done.stderr[-3000:]
    rows = statuses(folder / "status.embed.csv")
    assert rows["big"] == {**rows["big"], "status": "failed",
                           "message": f"cannot write {folder / 'big.h5'}: the disk is full (no space left on device)"}
    assert rows["small"]["status"] == "done"
    assert (folder / "big.h5").read_bytes() == before
    with h5py.File(folder / "small.h5") as f:
        assert f["features/stain-texture"].shape[0] == len(f["coords"])
    assert hidden(folder) == []


def test_an_injected_enospc_anywhere_in_the_bag_is_the_same_one_line(slides, clean, tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: ENOSPC injected into the bag writer (as HDF5 raises it, in
    the message of an OSError without errno)."""
    out = tmp_path / "bags"
    shutil.copytree(clean, out)
    before = (out / "big.h5").read_bytes()

    def full(self, *args, **kwargs):
        raise OSError("Can't write data (file write failed: ..., errno = 28, error message = 'No space left on "
                      "device', ...)")

    monkeypatch.setattr("h5py.File.close", full)  # every close fails, as HDF5's flush does on a full disk
    result = invoke("tile", slides / "big.svs", "--out", out, "--target-mpp", "1.0")
    monkeypatch.undo()
    assert result.exit_code == 1
    assert statuses(out / "status.csv")["big"]["message"] == \
        f"cannot write {out / 'big.h5'}: the disk is full (no space left on device)"
    assert (out / "big.h5").read_bytes() == before and hidden(out) == []


def test_a_status_file_that_cannot_be_written_does_not_stop_the_batch(slides, tmp_path, monkeypatch):
    import pathology.batch as batch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "status.csv")

    monkeypatch.setattr(batch, "publish_csv", full)
    result = invoke("tile", slides / "small.svs", "--out", tmp_path / "bags")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bags" / "small.h5").exists()
    assert "status file not written: status.csv: the disk is full" in " ".join(result.output.split())


def test_a_read_only_output_folder_is_one_clear_line(slides, disk):
    folder = disk(1 << 20, read_only=True)
    done = command("tile", slides / "small.svs", "--out", folder)
    assert done.returncode == 1
    failed = [line.split("failed: ", 1)[1].strip() for line in done.stderr.splitlines() if "small: failed:" in line]
    assert failed == [f"cannot write {folder / 'small.h5'}: the file system is read-only"]
    assert "HDF5" not in done.stderr and "Traceback" not in done.stderr


def test_an_io_error_reading_a_slide_is_one_line(slides, clean, tmp_path, monkeypatch):
    """A failing disk under the slide: EIO on the reads of tile data (tifffile's file handle)."""
    out = tmp_path / "bags"
    shutil.copytree(clean, out)
    before = (out / "big.h5").read_bytes()
    real = tifffile.FileHandle.read

    def failing(self, size=-1):
        if size > 4096:  # tile data, not the TIFF's directories
            raise OSError(errno.EIO, "Input/output error")
        return real(self, size)

    monkeypatch.setattr(tifffile.FileHandle, "read", failing)
    result = invoke("tile", slides / "big.svs", "--out", out, "--target-mpp", "1.0")
    assert result.exit_code == 1
    assert statuses(out / "status.csv")["big"]["message"] == \
        f"cannot read {slides / 'big.svs'}: input/output error: the disk or network file system failed (EIO)"
    assert (out / "big.h5").read_bytes() == before and hidden(out) == []


# --- corrupt tiles ------------------------------------------------------------------------------------------------
def tile_index(path: Path, level: int) -> tuple[list[int], list[int], int, int]:
    """(offsets, byte counts, tiles across, tile size) of a level of a TIFF pyramid."""
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[level].pages[0]
        return list(page.dataoffsets), list(page.databytecounts), -(-page.imagewidth // page.tilewidth), \
            page.tilewidth


def corrupt(src: Path, dst: Path, tiles: list[int], level: int = 0, marker: bool = False, seed: int = 0) -> None:
    """A copy of ``src`` with 300 random bytes written into the middle of each of ``tiles``:
    bytes 0-254 (never 0xFF, so no JPEG marker), or with a marker (0xFF 0xD9: end of image)."""
    shutil.copy(src, dst)
    offsets, counts, _, _ = tile_index(dst, level)
    rng = np.random.default_rng(seed)
    with open(dst, "r+b") as fh:
        for index in tiles:
            noise = rng.integers(0, 255, 300, dtype=np.uint8)
            if marker:
                noise[150:152] = (0xFF, 0xD9)
            fh.seek(offsets[index] + counts[index] // 2 - 150)
            fh.write(noise.tobytes())


def touched_tiles(coords: np.ndarray, size0: int, tile: int, across: int) -> list[set[int]]:
    """The level-0 tiles each patch (level-0 corner, side ``size0``) covers."""
    return [{ty * across + tx for ty in range(y // tile, (y + size0 - 1) // tile + 1)
             for tx in range(x // tile, (x + size0 - 1) // tile + 1)} for x, y in coords.tolist()]


def openslide_rejects(path: Path, tiles: list[int], across: int, tile: int) -> set[int]:
    """The tiles OpenSlide refuses to read (the independent reference for "corrupt")."""
    refused = set()
    for index in tiles:
        with openslide.OpenSlide(str(path)) as osr:
            try:
                osr.read_region(((index % across) * tile, (index // across) * tile), 0, (tile, tile))
            except openslide.OpenSlideError:
                refused.add(index)
    return refused


@pytest.fixture(scope="module")
def tissue_tiles(slides, clean) -> list[int]:
    """Eight level-0 tiles of the big slide under its patches (where corruption shows in a bag)."""
    _, counts, across, tile = tile_index(slides / "big.svs", 0)
    with h5py.File(clean / "big.h5") as f:
        used = set().union(*touched_tiles(f["coords"][:], int(f["coords"].attrs["patch_size_level0"]), tile, across))
    return sorted(used, key=lambda i: -counts[i])[:8]


@pytest.mark.parametrize("marker", [False, True], ids=["random-bytes", "with-marker"])
def test_a_corrupt_tile_fails_the_slide_naming_level_column_row_and_offset(slides, tissue_tiles, tmp_path, marker):
    bad = tmp_path / "bad.svs"
    corrupt(slides / "big.svs", bad, tissue_tiles, marker=marker)
    offsets, counts, across, tile = tile_index(bad, 0)
    refused = openslide_rejects(bad, tissue_tiles, across, tile)
    assert refused or not marker  # OpenSlide sees an early end of image; the fast reader must see all it sees
    for backend in ("auto", "openslide", "tiffslide"):  # the fast reader decodes the tiles whatever the backend
        out = tmp_path / backend
        result = invoke("tile", bad, slides / "small.svs", "--out", out, "--backend", backend)
        assert result.exit_code == 1
        rows = statuses(out / "status.csv")
        assert rows["small"]["status"] == "done" and rows["bad"]["status"] == "failed"
        message = rows["bad"]["message"]
        named = [i for i in tissue_tiles if f"column {i % across}, row {i // across} (file offset {offsets[i]}, "
                 f"{counts[i]} bytes)" in message]
        assert message.startswith(f"{bad}: corrupt tile at level 0, column ") and len(named) == 1, message
        assert not refused or named[0] in set(tissue_tiles)
        assert "Corrupt JPEG data" in message and message.endswith("--on-bad-tile skip drops the patches that touch it")
        assert not (out / "bad.h5").exists() and hidden(out) == []


@pytest.mark.parametrize("marker", [False, True], ids=["random-bytes", "with-marker"])
def test_skip_drops_exactly_the_patches_over_bad_tiles_and_records_them(slides, clean, tissue_tiles, tmp_path,
                                                                        marker):
    bad = tmp_path / "bad.svs"
    corrupt(slides / "big.svs", bad, tissue_tiles, marker=marker)
    _, _, across, tile = tile_index(bad, 0)
    refused = openslide_rejects(bad, tissue_tiles, across, tile)
    out = tmp_path / "bags"
    result = invoke("tile", bad, "--out", out, "--on-bad-tile", "skip")
    assert result.exit_code == 0, result.output
    attrs = read_attrs(out / "bad.h5")
    reported = {t["row"] * across + t["column"] for t in attrs["bad_tiles"]}
    assert refused <= reported <= set(tissue_tiles)  # at least as strict as OpenSlide; only damaged tiles
    with h5py.File(clean / "big.h5") as ref, h5py.File(out / "bad.h5") as got:
        coords = ref["coords"][:]
        over = touched_tiles(coords, int(ref["coords"].attrs["patch_size_level0"]), tile, across)
        dropped = np.array([bool(t & reported) for t in over])
        np.testing.assert_array_equal(got["coords"][:], coords[~dropped])
        np.testing.assert_array_equal(got["skipped_coords"][:], coords[dropped])
        assert len(got["patches"]) == (~dropped).sum()
        intact = np.array([not (t & set(tissue_tiles)) for t in over])[~dropped]  # patches over no damage
    kept = stored_patches(out / "bad.h5")
    np.testing.assert_array_equal(kept[intact], stored_patches(clean / "big.h5")[~dropped][intact])
    row = statuses(out / "status.csv")["bad"]
    assert row["count"] == str((~dropped).sum())
    assert f"skipped {dropped.sum()} patches over {len(reported)} bad tile(s)" in row["message"]
    assert f"skipped {dropped.sum()} patches" in " ".join(result.output.split())  # the summary says how many
    # a rerun with the default (fail) does not take the bag as complete: the slide fails, the bag stays
    before = (out / "bad.h5").read_bytes()
    again = invoke("tile", bad, "--out", out)
    assert again.exit_code == 1 and (out / "bad.h5").read_bytes() == before
    assert invoke("tile", bad, "--out", out, "--on-bad-tile", "skip").exit_code == 0
    assert statuses(out / "status.csv")["bad"]["status"] == "skipped"


def test_a_corrupt_tile_of_the_tissue_mask_level(slides, tmp_path):
    with open_slide(slides / "big.svs") as slide:
        level = slide.best_level_for(TissueParams().mask_mpp / slide.mpp.x)
    assert level > 0
    _, counts, across, _ = tile_index(slides / "big.svs", level)
    victim = int(np.argmax(counts))  # the level's most detailed tile: tissue
    bad = tmp_path / "bad.svs"
    corrupt(slides / "big.svs", bad, [victim], level=level, marker=True)
    failed = invoke("tile", bad, "--out", tmp_path / "fail")
    assert failed.exit_code == 1
    assert f"corrupt tile at level {level}, column {victim % across}, row {victim // across}" in \
        statuses(tmp_path / "fail" / "status.csv")["bad"]["message"]
    skipped = invoke("tile", bad, "--out", tmp_path / "skip", "--on-bad-tile", "skip")
    assert skipped.exit_code == 0
    assert [(t["level"], t["column"], t["row"]) for t in read_attrs(tmp_path / "skip" / "bad.h5")["bad_tiles"]] == \
        [(level, victim % across, victim // across)]


# --- kill -9 and a rerun ------------------------------------------------------------------------------------------
def kill_when(cmd: list, ready, timeout: float = 120) -> None:
    """Start `pathology CMD`, SIGKILL it as soon as ``ready()`` holds."""
    env = ENV
    proc = subprocess.Popen([sys.executable, "-c", "from pathology.cli import app; app()", *map(str, cmd)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


TILE = ["--patch-size", "64", "--compression", "gzip"]  # many patches: a write long enough to interrupt


@pytest.mark.slow
def test_kill_9_while_tiling_then_a_rerun_leaves_what_a_clean_run_leaves(slides, tmp_path):
    reference = tmp_path / "reference"
    assert command("tile", slides / "big.svs", slides / "small.svs", "--out", reference, *TILE).returncode == 0
    out = tmp_path / "bags"
    kill_when(["tile", slides / "big.svs", slides / "small.svs", "--out", out, *TILE],
              lambda: any(p.name.endswith(".partial") for p in out.glob(".big.h5.*")))
    left = hidden(out)
    assert any(n.endswith(".partial") for n in left) and ".big.h5.claim" in left  # killed mid-write
    assert command("tile", slides / "big.svs", slides / "small.svs", "--out", out, *TILE).returncode == 0
    assert listing(out) == listing(reference) and hidden(out) == []
    for name in ("big", "small"):
        assert bag_content(out / f"{name}.h5") == bag_content(reference / f"{name}.h5")


@pytest.mark.slow
def test_kill_9_while_embedding_then_a_rerun_leaves_what_a_clean_run_leaves(slides, tmp_path):
    tiled = tmp_path / "tiled"
    assert command("tile", slides / "big.svs", "--out", tiled, *TILE).returncode == 0
    reference, out = tmp_path / "reference", tmp_path / "bags"
    shutil.copytree(tiled, reference)
    shutil.copytree(tiled, out)
    assert command("embed", reference, "--batch-size", "16").returncode == 0
    before = (out / "big.h5").read_bytes()
    kill_when(["embed", out, "--batch-size", "16"],
              lambda: any(p.name.endswith(".partial") for p in out.glob(".big.h5.*")))
    assert any(n.endswith(".partial") for n in hidden(out))  # the staged copy, killed mid-way
    assert (out / "big.h5").read_bytes() == before  # the bag itself is untouched
    assert command("embed", out, "--batch-size", "16").returncode == 0
    assert listing(out) == listing(reference) and hidden(out) == []
    got, want = bag_content(out / "big.h5"), bag_content(reference / "big.h5")
    features = "features/stain-texture"
    assert np.allclose(np.frombuffer(got.pop(features), np.float16), np.frombuffer(want.pop(features), np.float16),
                       atol=1e-3)
    assert got == want


def test_leftovers_of_every_writer_are_swept_when_the_next_batch_starts(slides, tmp_path):
    """What a killed process of any writer leaves (bags, staged copies and their .old links, QC
    pictures, IHC and heatmap outputs, synthetic slides' scratch folders, stage-dir copies,
    claims) is recognised by its name and removed; a live process's files are kept."""
    from pathology.publish import HOST

    out, stage = tmp_path / "bags", tmp_path / "stage"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    made = [out / f".big.h5.{HOST}.{dead}.1.partial", out / f".big.h5.{HOST}.{dead}.1.old",
            out / "qc" / f".big.png.{HOST}.{dead}.1.partial", out / "cells" / f".big.csv.{HOST}.{dead}.7.partial",
            out / ".big.h5.claim"]
    folders = [out / f".big.svs.synth.{HOST}.{dead}.2.partial", stage / f".stage-big.svs.{HOST}.{dead}.3.partial"]
    live = out / f".small.h5.{HOST}.{os.getpid()}.1.partial"
    for path in [*made, live]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"host": HOST, "pid": int(dead), "started": 0}))
    for folder in folders:
        (folder / "inside").mkdir(parents=True)
        (folder / "inside" / "ds4.raw").write_bytes(b"x")
    result = invoke("tile", slides / "small.svs", "--out", out, "--stage-dir", stage)
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in [*made, *folders])
    assert live.exists()  # this (live) process's


def test_another_hosts_leftovers_go_once_stale_and_unclaimed(tmp_path):
    from pathology.publish import sweep_leftovers

    old = tmp_path / ".a.h5.node7.123.1.partial"
    claimed = tmp_path / ".b.h5.node7.124.1.partial"
    fresh = tmp_path / ".c.h5.node7.125.1.partial"
    scratch = tmp_path / ".stage-d.svs.node7.126.1.partial"  # a folder: may be a live stage copy
    scratch.mkdir()
    for path in (old, claimed, fresh):
        path.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for path in (old, claimed, scratch):
        os.utime(path, (hour_ago, hour_ago))
    removed = sweep_leftovers(tmp_path, stale_after=600, in_use=lambda target: target.name == "b.h5")
    assert removed == [old] and claimed.exists() and fresh.exists() and scratch.exists()
    assert sweep_leftovers(tmp_path) == [] and claimed.exists()  # without stale_after: other hosts' are kept


# --- a slide changed in place -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    """A slide of ~9 MB: larger than the first and last MiB and the 64 samples between them."""
    path = tmp_path_factory.mktemp("large") / "large.svs"
    write_synthetic_slide(path, SynthConfig(width=10240, height=8192, mpp=0.25, seed=2))
    assert path.stat().st_size > 2 * EDGE + SAMPLES * BLOCK
    return path


def unsampled_tile(path: Path) -> tuple[int, int]:
    """(offset, length) of a level-0 tile's data that no fingerprint sample covers."""
    covered = sample_offsets(path.stat().st_size)
    offsets, counts, _, _ = tile_index(path, 0)
    for offset, count in sorted(zip(offsets, counts), key=lambda oc: -oc[1]):
        if all(offset + count <= a or offset >= a + n for a, n in covered):
            return offset, count
    raise AssertionError("every tile touches a sample")


def rewrite_in_place(path: Path, keep_mtime: bool = False) -> None:
    """Change 300 bytes inside a level-0 tile between the fingerprint's samples (size unchanged),
    as a bad copy or a faulty disk would; ``keep_mtime``: and put the modification time back."""
    stat = path.stat()
    offset, count = unsampled_tile(path)
    with open(path, "r+b") as fh:
        fh.seek(offset + count // 2)
        fh.write(bytes(range(150)) * 2)
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_slide_rewritten_in_place_is_tiled_again(large, tmp_path):
    slide, out = tmp_path / "s.svs", tmp_path / "bags"
    shutil.copy2(large, slide)
    assert invoke("tile", slide, "--out", out, "--no-patches").exit_code == 0
    assert invoke("tile", slide, "--out", out, "--no-patches").exit_code == 0
    assert statuses(out / "status.csv")["s"]["status"] == "skipped"
    old = legacy_fingerprint(slide)
    rewrite_in_place(slide)
    assert legacy_fingerprint(slide) == old  # the old rule (size, first and last MiB) misses it
    assert invoke("tile", slide, "--out", out, "--no-patches").exit_code == 0
    assert statuses(out / "status.csv")["s"]["status"] == "done"  # its modification time gives it away
    assert read_attrs(out / "s.h5")["slide_fingerprint"] == fingerprint(slide)


def test_verify_slides_sees_a_change_that_kept_size_and_mtime(large, tmp_path):
    slide, out = tmp_path / "s.svs", tmp_path / "bags"
    shutil.copy2(large, slide)
    assert invoke("tile", slide, "--out", out, "--no-patches", "--verify-slides").exit_code == 0
    assert "sha256=" in read_attrs(out / "s.h5")["slide_fingerprint"]
    rewrite_in_place(slide, keep_mtime=True)
    # the default rule cannot see a change between its samples that kept size and mtime (documented)
    assert invoke("tile", slide, "--out", out, "--no-patches").exit_code == 0
    assert statuses(out / "status.csv")["s"]["status"] == "skipped"
    assert invoke("tile", slide, "--out", out, "--no-patches", "--verify-slides").exit_code == 0
    assert statuses(out / "status.csv")["s"]["status"] == "done"
    os.utime(slide, ns=(1, 1))  # touched (a copy without -p): the full hash says it is the same slide
    assert invoke("tile", slide, "--out", out, "--no-patches", "--verify-slides").exit_code == 0
    assert statuses(out / "status.csv")["s"]["status"] == "skipped"


def test_rewrite_in_place_changes_the_pixels_it_should(large, tmp_path):
    """The change the two tests above make is a real one: the tile it hits decodes differently
    (or not at all)."""
    slide = tmp_path / "s.svs"
    shutil.copy2(large, slide)
    offset, _ = unsampled_tile(slide)
    offsets, _, across, tile = tile_index(slide, 0)
    index = offsets.index(offset)
    box = ((index % across) * tile, (index // across) * tile)
    with openslide.OpenSlide(str(large)) as osr:
        before = np.asarray(osr.read_region(box, 0, (tile, tile)))
    rewrite_in_place(slide)
    with openslide.OpenSlide(str(slide)) as osr:
        try:
            after = np.asarray(osr.read_region(box, 0, (tile, tile)))
        except openslide.OpenSlideError:
            return
    assert not np.array_equal(before, after)


def test_embedding_from_the_slide_accepts_a_copy_elsewhere_and_refuses_a_changed_one(slides, tmp_path):
    out, moved = tmp_path / "bags", tmp_path / "moved"
    assert invoke("tile", slides / "small.svs", "--out", out, "--no-patches").exit_code == 0
    moved.mkdir()
    shutil.copyfile(slides / "small.svs", moved / "small.svs")  # a plain copy: a new modification time
    assert (moved / "small.svs").stat().st_mtime_ns != (slides / "small.svs").stat().st_mtime_ns
    assert invoke("embed", out, "--slides", moved).exit_code == 0
    assert invoke("embed", out, "--slides", moved, "--overwrite", "--verify-slides").exit_code == 1
    assert "nothing to verify against" in statuses(out / "status.embed.csv")["small"]["message"]
    with open(moved / "small.svs", "r+b") as fh:  # a copy that went wrong in the middle
        fh.seek((moved / "small.svs").stat().st_size // 2)
        fh.write(bytes(300))
    result = invoke("embed", out, "--slides", moved, "--overwrite")
    assert result.exit_code == 1
    assert statuses(out / "status.embed.csv")["small"]["message"] == \
        f"small.h5: slide {moved / 'small.svs'} is not the file this bag was tiled from (slide file changed " \
        "(content differs)); re-tile it"


def test_bags_with_the_old_fingerprint_stay_usable(slides, tmp_path):
    """A bag made before sampled fingerprints (size + first and last MiB) is still complete
    for its slide and still embeds from it; only --verify-slides re-makes it."""
    out = tmp_path / "bags"
    assert invoke("tile", slides / "small.svs", "--out", out, "--no-patches").exit_code == 0
    with h5py.File(out / "small.h5", "r+") as f:
        f.attrs["slide_fingerprint"] = legacy_fingerprint(slides / "small.svs")
    stamp = (out / "small.h5").stat().st_mtime_ns
    assert invoke("tile", slides / "small.svs", "--out", out, "--no-patches").exit_code == 0
    assert statuses(out / "status.csv")["small"]["status"] == "skipped"
    assert invoke("embed", out).exit_code == 0
    assert invoke("tile", slides / "small.svs", "--out", out, "--no-patches", "--verify-slides").exit_code == 0
    assert statuses(out / "status.csv")["small"]["status"] == "done" and (out / "small.h5").stat().st_mtime_ns != stamp


# --- the smaller cases --------------------------------------------------------------------------------------------
def test_an_image_smaller_than_one_patch_says_so(tmp_path):
    from PIL import Image

    picture = np.full((150, 200, 3), 235, np.uint8)
    picture[20:130, 30:170] = (170, 70, 140)  # all tissue but a margin
    Image.fromarray(picture).save(tmp_path / "tiny.png")
    result = invoke("tile", tmp_path / "tiny.png", "--out", tmp_path / "bags", "--mpp", "0.5")
    assert result.exit_code == 1
    message = statuses(tmp_path / "bags" / "status.csv")["tiny"]["message"]
    assert message == (f"{tmp_path / 'tiny.png'}: the image (200x150 px, 100x75 µm at 0.5 µm/px) is smaller than "
                       "one patch (256 px at 0.5 µm/px = 256x256 px of this image); use a smaller --patch-size or "
                       "--target-mpp, or check its µm/px (--mpp)")
    assert "min-tissue" not in message
    assert invoke("tile", tmp_path / "tiny.png", "--out", tmp_path / "ok", "--mpp", "0.5",
                  "--patch-size", "64").exit_code == 0


def test_truncated_and_empty_bags_are_one_clear_line(clean, tmp_path):
    whole = (clean / "small.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole[:len(whole) // 3])
    (tmp_path / "empty.h5").write_bytes(b"")
    result = invoke("embed", tmp_path / "cut.h5", tmp_path / "empty.h5")
    assert result.exit_code == 1 and "bug" not in result.output
    rows = statuses(tmp_path / "status.embed.csv")
    assert rows["cut"]["message"] == (f"{tmp_path / 'cut.h5'}: not a readable bag (truncated: {len(whole) // 3} "
                                      f"of its {len(whole)} bytes; an interrupted copy?)")
    assert rows["empty"]["message"] == f"{tmp_path / 'empty.h5'}: not a readable bag (empty file)"


def test_paths_with_spaces_unicode_and_glob_characters(slides, tmp_path):
    folder = tmp_path / "cohort ünï [2024]"
    folder.mkdir()
    odd = folder / "slide *?[a] é.svs"
    shutil.copy(slides / "small.svs", odd)
    out = tmp_path / "bags ø"
    result = invoke("tile", odd, "--out", out)
    assert result.exit_code == 0, result.output
    assert bag_content(out / "slide *?[a] é.h5")["patches"]
    assert invoke("embed", out).exit_code == 0


def test_label_and_macro_images_are_never_read_by_tiling(slides, tmp_path):
    """A slide whose label and macro pages are garbage: any read of them would fail, and
    tiling (strict about every tile it decodes) succeeds."""
    slide = tmp_path / "labelled.svs"
    shutil.copy(slides / "small.svs", slide)
    with tifffile.TiffWriter(slide, append=True) as tif:
        for name in ("label", "macro"):
            tif.write(np.zeros((64, 64, 3), np.uint8), photometric="rgb", compression="jpeg", metadata=None,
                      description=f"Aperio Image Library v12.0.0\r\n{name} 64x64", subfiletype=1)
    with tifffile.TiffFile(slide) as tif:
        pages = [p for p in tif.pages if "label" in str(p.description) or "macro" in str(p.description)]
        assert len(pages) == 2
        spans = [(p.dataoffsets[0], p.databytecounts[0]) for p in pages]
    with open(slide, "r+b") as fh:
        for offset, count in spans:
            fh.seek(offset)
            fh.write(b"\xff" * count)
    assert invoke("tile", slide, "--out", tmp_path / "bags").exit_code == 0


def test_two_concurrent_runs_on_one_folder_give_the_clean_bags(slides, clean, tmp_path):
    out = tmp_path / "bags"
    env = ENV
    cmd = [sys.executable, "-c", "from pathology.cli import app; app()", "tile", str(slides / "big.svs"),
           str(slides / "small.svs"), "--out", str(out)]
    runs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for _ in range(2)]
    assert [p.wait(timeout=300) for p in runs] == [0, 0]
    for name in ("big", "small"):
        assert bag_content(out / f"{name}.h5") == bag_content(clean / f"{name}.h5")
    assert hidden(out) == []


def test_hdf5_failures_are_read_for_their_errno_and_named_by_file(tmp_path):
    """HDF5 raises a failed system call as an OSError without errno, or a RuntimeError, with the
    errno inside its message (texts as h5py 3.16 / HDF5 2.0 raised them on a full tmpfs and a
    read-only one)."""
    from pathology.errors import describe, is_user_fixable, storage_error

    flush = RuntimeError("Disable slist on flush dest failure failed (file write failed: time = Sun Dec 6 11:55:36 "
                         "2026 , filename = '/x/.s.h5.vm.27569.1400.partial', file descriptor = 4, errno = 28, error "
                         "message = 'No space left on device', buf = 0x5626bcd0b868, total write size = 6296)")
    assert is_user_fixable(flush)
    assert str(storage_error(flush, "/x/s.h5")) == "cannot write /x/s.h5: the disk is full (no space left on device)"
    assert describe(flush) == "/x/.s.h5.vm.27569.1400.partial: the disk is full (no space left on device)"
    read_only = OSError("Unable to synchronously create file (unable to open file: name = '/ro/a.h5', errno = 30, "
                        "error message = 'Read-only file system', flags = 13, o_flags = 242)")
    assert describe(read_only) == "/ro/a.h5: the file system is read-only"
    assert describe(OSError(errno.ENOSPC, "No space left on device")) == "the disk is full (no space left on device)"
    no_errno = RuntimeError("Can't decrement id ref count")  # no errno, room on the disk: a bug stays a bug
    assert storage_error(no_errno, tmp_path / "a.h5") is None and describe(no_errno).startswith("bug: RuntimeError")
    assert storage_error(ValueError("shape mismatch"), tmp_path / "a.h5") is None
