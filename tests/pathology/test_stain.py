"""Stain normalization: agreement with staintools (the reference implementation) on a real
H&E pair, the exact lasso, the fast paths, IHC handling and errors."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from importlib import resources

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2hed, rgb2hsv

from pathology.errors import UserError
from pathology.stain import METHODS, StainFitError, StainReferenceError, create_normalizer, restore_normalizer
from pathology.stain import lut as lut_module
from pathology.stain.errors import StainError
from pathology.stain.kernel import StainTransfer
from pathology.stain.lasso import nonneg_lasso2
from pathology.stain.od import rgb_to_od


def rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def psnr_mad(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = a.astype(np.float64) - b
    mse = float(np.mean(diff ** 2))
    return (np.inf if mse == 0 else 10 * np.log10(255 ** 2 / mse)), float(np.abs(diff).mean())


@pytest.fixture(scope="module")
def pair(data):
    return rgb(data / "torchstain/source.png"), rgb(data / "torchstain/target.png")


@pytest.fixture(scope="module")
def ihc(data):
    return rgb(data / "scikit-image/ihc.png")


@pytest.fixture(scope="module")
def patches(pair, data):
    """Four 256-px patches of real H&E (torchstain source, a TCGA lung tile), fitted as one slide."""
    tile = rgb(data / "histolab/tcga-lung-rgb.png")
    return np.stack([pair[0][:256, :256], pair[0][150:406, 300:556], tile[:256, :256], tile[256:, 256:]])


def staintools_output(method: str, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The reference implementation's result. staintools (a dependency of the ``test`` extra)
    and spams (of the package: Vahadane needs it) are imported by the five tests that compare
    with them: a missing one fails tests instead of skipping the module."""
    import staintools

    if method == "reinhard":
        ref = staintools.ReinhardColorNormalizer()
    else:
        ref = staintools.StainNormalizer(method)
    ref.fit(target.copy())  # staintools writes into its inputs (0 -> 1)
    return ref.transform(source.copy())


def normalize_whole(method: str, source: np.ndarray, target: np.ndarray, **kw) -> np.ndarray:
    """Ours, with the whole source image as one slide."""
    normalizer = create_normalizer(method, reference=target, **kw).fit_slide(source[None])
    return normalizer.transform(source[None])[0]


# --- agreement with staintools on the real H&E pair ------------------------------------------

def test_macenko_agrees_with_staintools(pair):
    ours, ref = normalize_whole("macenko", *pair), staintools_output("macenko", *pair)
    psnr, mad = psnr_mad(ours, ref)
    assert psnr >= 35 and mad < 0.01, (psnr, mad)  # measured: 97.0 dB, MAD 1.3e-5 (float32 rounding)
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_reinhard_agrees_with_staintools(pair):
    ours, ref = normalize_whole("reinhard", *pair), staintools_output("reinhard", *pair)
    psnr, mad = psnr_mad(ours, ref)
    assert psnr >= 60 and mad < 0.001, (psnr, mad)  # measured: identical (same OpenCV LAB, exact tables)


def test_vahadane_agrees_with_staintools(pair, monkeypatch):
    """staintools' dictionary learning runs for a wall-clock second (spams ``iter=-1``), so on
    a busy machine it stops early and drifts; pinned here to a fixed 3,000 iterations on one
    thread (about that second on an idle machine), it is reproducible. Ours is deterministic."""
    from staintools.stain_extraction import vahadane_stain_extractor

    spams = vahadane_stain_extractor.spams
    monkeypatch.setattr(spams, "trainDL", functools.partial(spams.trainDL, iter=3000, numThreads=1))
    ours, ref = normalize_whole("vahadane", *pair), staintools_output("vahadane", *pair)
    psnr, mad = psnr_mad(ours, ref)
    assert psnr >= 40 and mad < 1.0, (psnr, mad)  # measured: ~55 dB, MAD ~0.2


def test_reference_is_fitted_once_per_process(pair, monkeypatch):
    """The tiler creates a normalizer per slide; only the first fits the reference."""
    from pathology.stain.macenko import MacenkoNormalizer

    fitted = []
    original = MacenkoNormalizer._fit
    monkeypatch.setattr(MacenkoNormalizer, "_fit", lambda self, pixels: fitted.append(len(pixels))
                        or original(self, pixels))
    top, bottom = pair[1][:300].copy(), pair[1][300:].copy()  # references no other test uses
    first, second = (create_normalizer("macenko", reference=top) for _ in range(2))
    assert len(fitted) == 1 and second.target is first.target
    assert create_normalizer("macenko", reference=bottom).target is not first.target and len(fitted) == 2
    second.fit_slide(pair[0][None])  # slides are still fitted every time
    assert len(fitted) == 3


def test_vahadane_fit_is_deterministic(pair):
    a = create_normalizer("vahadane", reference=pair[1]).fit_slide(pair[0][None]).to_attrs()
    b = create_normalizer("vahadane", reference=pair[1]).fit_slide(pair[0][None]).to_attrs()
    assert a == b


# --- the exact lasso ------------------------------------------------------------------------

@pytest.mark.parametrize("overlap", ["positive", "negative"])
def test_closed_form_lasso_equals_spams(overlap):
    import spams

    rng = np.random.default_rng(1)
    stains = np.abs(rng.normal(size=(2, 3)))
    if overlap == "negative":
        stains[1] = [-0.2, 0.3, -0.9]  # obtuse pair: the other branch of the closed form
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    assert (stains[0] @ stains[1] > 0) == (overlap == "positive")
    od = rgb_to_od(rng.integers(0, 256, (20000, 3), dtype=np.uint8))
    od[:2000] = rng.random((2000, 3)) * 0.02  # near the lasso threshold: the sparse cases
    ours = nonneg_lasso2(od, stains)
    ref = spams.lasso(X=np.asfortranarray(od.T), D=np.asfortranarray(stains.T), mode=2, lambda1=0.01,
                      pos=True).toarray().T
    assert np.abs(ours - ref).max() < 1e-6
    assert (ref == 0).any(axis=1).mean() > 0.05  # the one-stain and no-stain active sets were exercised


# --- fast paths -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_batched_equals_per_patch(method, patches):
    normalizer = create_normalizer(method, lut=False).fit_slide(patches)
    batch = normalizer.transform(patches)
    assert batch.shape == patches.shape and batch.dtype == np.uint8
    assert np.array_equal(batch, np.stack([normalizer.transform(p[None])[0] for p in patches]))
    assert np.array_equal(normalizer.transform(patches[0]), batch[0])  # a single (H, W, 3) image too
    flat, out = patches.reshape(-1, 3), batch.reshape(-1, 3)
    assert np.array_equal(normalizer.transform(flat[5:70_008]), out[5:70_008])  # any offset and length
    assert not np.array_equal(batch, patches)


def test_lut_equals_direct_on_every_colour(pair):
    every = np.arange(1 << 24, dtype=np.uint32).view(np.uint8).reshape(4096, 4096, 4)[..., :3].copy()
    direct = create_normalizer("macenko", lut=False).fit_slide(pair[0][None])
    table = create_normalizer("macenko", lut=True).fit_slide(pair[0][None])
    assert table.uses_lut and not direct.uses_lut
    assert np.array_equal(direct.transform(every), table.transform(every))


def test_lut_reinhard_equals_direct(patches):
    direct = create_normalizer("reinhard", lut=False).fit_slide(patches)
    table = create_normalizer("reinhard", lut=True).fit_slide(patches)
    assert np.array_equal(direct.transform(patches), table.transform(patches))


def test_lut_is_built_when_it_pays(patches, monkeypatch):
    monkeypatch.setattr(lut_module, "BREAK_EVEN_PIXELS", 5 * 256 * 256)
    monkeypatch.setattr(lut_module, "BUILD_COST_PIXELS", 4 * 256 * 256)
    assert create_normalizer("macenko").fit_slide(patches, expected_patches=5).uses_lut
    auto = create_normalizer("macenko").fit_slide(patches, expected_patches=4)
    auto.transform(patches[:2])
    assert not auto.uses_lut
    auto.transform(patches[:2])  # 4 patches transformed directly: as costly as the build
    assert auto.uses_lut
    never = create_normalizer("macenko", lut=False).fit_slide(patches, expected_patches=100)
    never.transform(patches), never.transform(patches)
    assert not never.uses_lut


def test_transform_is_thread_safe_while_the_lut_is_built(patches, monkeypatch):
    monkeypatch.setattr(lut_module, "BUILD_COST_PIXELS", 2 * 256 * 256)
    expected = create_normalizer("macenko", lut=False).fit_slide(patches).transform(patches)
    shared = create_normalizer("macenko").fit_slide(patches)
    results, errors = [], []

    def work():
        try:
            results.extend(shared.transform(patches) for _ in range(3))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12 and shared.uses_lut
    assert all(np.array_equal(r, expected) for r in results)


def test_target_with_a_negative_component_saturates_instead_of_wrapping():
    source = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    source /= np.linalg.norm(source, axis=1, keepdims=True)
    target = np.array([[0.70, 0.70, 0.14], [0.30, 0.95, -0.10]])  # Macenko can return this
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    transfer = StainTransfer(source, np.array([1.0, 1.0]), target, np.array([1.0, 2.0]))
    pink = np.array([[230, 120, 200], [255, 255, 255]], np.uint8)
    out = transfer(pink)
    assert out[0, 2] == 255 and out[0, 1] < 120  # blue saturates (staintools' cast would wrap to ~0)
    assert np.array_equal(out[1], [255, 255, 255])


# --- what normalization does ----------------------------------------------------------------

def fit_gap(method: str, fit: dict, target: dict) -> float:
    """How far an image's fitted statistics are from the target's: the larger angle (degrees)
    between corresponding stain vectors plus the relative gap of the 99th-percentile
    concentrations; for Reinhard, the summed gap of the LAB means and standard deviations."""
    if method == "reinhard":
        return float(sum(np.abs(np.subtract(fit[k], target[k])).sum() for k in ("lab_means", "lab_stds")))
    cos = np.sum(np.multiply(fit["stain_matrix"], target["stain_matrix"]), axis=1)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1))).max()
    return float(angle + 100 * np.abs(1 - np.divide(fit["max_concentrations"], target["max_concentrations"])).max())


@pytest.mark.parametrize("method", ["macenko", "vahadane", "reinhard"])
def test_moves_colour_statistics_toward_the_target(method, pair):
    source, target = pair
    out = normalize_whole(method, source, target)
    refit = create_normalizer(method, reference=target)
    goal = refit.to_attrs()["target"]
    before = fit_gap(method, refit.fit_slide(source[None]).to_attrs()["slide"], goal)
    after = fit_gap(method, refit.fit_slide(out[None]).to_attrs()["slide"], goal)
    assert after < 0.15 * before, (before, after)  # measured: 72→2.7, 56→5.9, 45→1.2


def test_none_is_identity(patches):
    normalizer = create_normalizer("none", reference="/no/such/reference.png")  # never read
    assert normalizer.fit_slide(patches) is normalizer
    assert normalizer.transform(patches) is patches
    assert normalizer.to_attrs() == {"method": "none", "kind": "he"}
    assert METHODS[0] == "none" and set(METHODS) == {"none", "macenko", "vahadane", "reinhard"}


@pytest.mark.parametrize("method", ["macenko", "vahadane", "reinhard"])
def test_to_attrs_is_json_with_the_fits(method, patches):
    attrs = json.loads(json.dumps(create_normalizer(method).fit_slide(patches).to_attrs()))
    packaged = resources.files("pathology.stain") / "references" / "he_cmu1.png"
    assert attrs["method"] == method and attrs["kind"] == "he"
    assert attrs["reference"] == {"name": "he_cmu1.png", "source": "packaged",
                                  "sha256": hashlib.sha256(packaged.read_bytes()).hexdigest()}
    for fit in (attrs["target"], attrs["slide"]):
        if method == "reinhard":
            assert len(fit["lab_means"]) == 3 and all(s > 0 for s in fit["lab_stds"])
        else:
            matrix = np.array(fit["stain_matrix"])
            assert matrix.shape == (2, 3) and np.allclose(np.linalg.norm(matrix, axis=1), 1)
            assert all(m > 0 for m in fit["max_concentrations"])
    assert attrs["target"] != attrs["slide"]


# --- IHC: DAB stays brown -------------------------------------------------------------------

def dab_hue(image: np.ndarray, positive: np.ndarray) -> float:
    """Hue (degrees) of the mean colour of the DAB-positive pixels."""
    return float(rgb2hsv(image[positive].mean(axis=0)[None, None] / 255)[0, 0, 0] * 360)


def shift_hue(image: np.ndarray, degrees: int) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + degrees // 2) % 180  # OpenCV hue is in 2° steps
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@pytest.mark.parametrize("method", ["macenko", "vahadane"])
def test_ihc_keeps_dab_brown_and_he_would_not(method, ihc):
    """Slide: the left half of the real IHC image (as is, or hue-shifted); reference: its
    right half (and the packaged IHC reference). DAB-positive pixels (skimage's HED
    deconvolution) must stay brown with kind="ihc"; with kind="he" the DAB vector is
    taken for eosin and the same pixels turn purple."""
    left, right = ihc[:, :256], ihc[:, 256:]
    positive = rgb2hed(left)[..., 2] > np.percentile(rgb2hed(ihc)[..., 2], 95)
    original = dab_hue(left, positive)
    assert 15 < original < 40 and positive.sum() > 1000  # brown to begin with
    ihc_paths = [create_normalizer(method, reference=reference, kind="ihc") for reference in (right, None)]
    he_path = create_normalizer(method, kind="he")
    for degrees in (0, -16, 24):
        slide = shift_hue(left, degrees)[None]
        assert degrees == 0 or abs(dab_hue(slide[0], positive) - original) > 10
        for normalizer in ihc_paths:
            out = normalizer.fit_slide(slide).transform(slide)[0]
            assert abs(dab_hue(out, positive) - original) < 6, (degrees, normalizer.reference.name)
        he = he_path.fit_slide(slide).transform(slide)[0]
        assert 220 < dab_hue(he, positive) < 345  # purple/pink, no longer brown


def test_ihc_warns_when_the_dab_vector_looks_like_hematoxylin(ihc, pair, caplog):
    normalizer = create_normalizer("macenko", kind="ihc")
    with caplog.at_level("WARNING", logger="pathology.stain"):
        normalizer.fit_slide(ihc[None])
        assert not caplog.records
        normalizer.fit_slide(pair[0][None])  # H&E: no DAB, eosin is the odd vector out
    assert "closer to hematoxylin than to DAB" in caplog.text


def test_ihc_attrs_name_dab(ihc):
    attrs = create_normalizer("macenko", kind="ihc").fit_slide(ihc[None]).to_attrs()
    assert attrs["kind"] == "ihc" and attrs["stains"] == ["hematoxylin", "dab"]
    assert attrs["reference"]["name"] == "ihc_skimage.png"
    reinhard = create_normalizer("reinhard", kind="ihc").to_attrs()
    assert reinhard["reference"]["name"] == "ihc_skimage.png"


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["macenko", "vahadane", "reinhard"])
def test_no_tissue_is_a_clear_error(method, data):
    normalizer = create_normalizer(method)
    white = np.full((2, 64, 64, 3), 255, np.uint8)
    glass = rgb(data / "histolab/no-tissue.png")  # glass with a few specks of dust
    for sample in (white, glass[None]):
        with pytest.raises(StainFitError, match="no tissue pixels to fit") as info:
            normalizer.fit_slide(sample)
        assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    with pytest.raises(RuntimeError, match="fit_slide"):
        normalizer.transform(white)


def test_bad_reference_names_the_file(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(StainReferenceError, match="missing.png") as info:
        create_normalizer("macenko", reference=missing)
    assert "\n" not in str(info.value)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(StainReferenceError, match="notes.png: not an image"):
        create_normalizer("reinhard", reference=text)
    with pytest.raises(StainReferenceError, match="no tissue"):
        create_normalizer("macenko", reference=np.full((64, 64, 3), 255, np.uint8))


def test_unknown_method_or_kind():
    with pytest.raises(StainError, match="choose from none, macenko, vahadane, reinhard"):
        create_normalizer("stainnet")
    with pytest.raises(StainError, match="unknown stain kind 'pas'"):
        create_normalizer("macenko", kind="pas")
    with pytest.raises(ValueError, match="uint8 RGB"):
        create_normalizer("macenko").fit_slide(np.zeros((1, 8, 8, 4), np.uint8))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["he", "ihc"])
def test_bag_record_restores_the_fitted_normalizer(method, kind, pair, ihc):
    """A coords-only bag's patches are re-read from the slide and must be normalized as the
    tiler did, from the bag's ``stain`` attribute alone (JSON, no reference file)."""
    source = ihc if kind == "ihc" else pair[0]
    fitted = create_normalizer(method, kind=kind).fit_slide(source)
    restored = restore_normalizer(json.loads(json.dumps(fitted.to_attrs())))
    assert restored.to_attrs() == fitted.to_attrs()
    assert np.array_equal(restored.transform(source), fitted.transform(source))
    if method != "none":
        assert not np.array_equal(fitted.transform(source), source)  # the check has teeth


def test_unknown_stain_record_is_refused():
    with pytest.raises(StainError, match="unknown stain record"):
        restore_normalizer({"method": "magic", "kind": "he"})
