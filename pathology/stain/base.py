"""What every stain normalizer does: fit once to a reference (at construction, cached per
process), once per slide on a sample of its tissue patches, then transform the slide's
patches in batches."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from . import lut as lut_module
from .errors import StainFitError, StainReferenceError
from .kinds import StainKind
from .od import as_pixels, tissue_mask
from .reference import Reference, ReferenceLike, load_reference

log = logging.getLogger(__name__)

Patches = np.ndarray | Sequence[np.ndarray]
PixelMap = Callable[[np.ndarray], np.ndarray]

MIN_TISSUE_PIXELS = 100
MIN_TISSUE_SHARE = 0.001

_TARGET_FITS: dict[tuple[str, str, str], Any] = {}
"""Reference fits of this process by (method, kind, reference sha256): a batch creates one
normalizer per slide, and the reference is fitted only for the first (fits are
deterministic, so a concurrent duplicate fit is merely wasted work)."""


class Normalizer(ABC):
    """Stain normalizer interface (see the :mod:`pathology.stain` docstring for usage)."""

    method: ClassVar[str]

    def __init__(self, kind: StainKind, reference: ReferenceLike = None, lut: bool | None = None):
        self.kind = kind

    @abstractmethod
    def fit_slide(self, patches: Patches, expected_patches: int | None = None) -> Normalizer:
        """Fit the slide's own stain appearance from a sample of its uint8 RGB patches
        ((N, H, W, 3), a list of (H, W, 3), or one image); ``expected_patches``, the number
        of patches that will be transformed, lets the normalizer prepare the fastest path.
        Not to be called while another thread transforms."""

    @abstractmethod
    def transform(self, batch: np.ndarray) -> np.ndarray:
        """Normalize uint8 RGB patches (..., 3), e.g. (N, H, W, 3); same shape and dtype out."""

    @abstractmethod
    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready description of the fits, for a bag's ``stain`` attribute."""


def require_tissue(pixels: np.ndarray) -> np.ndarray:
    """Tissue mask of a fit's pixels, or :class:`StainFitError` if there is too little tissue."""
    mask = tissue_mask(pixels)
    found, needed = int(mask.sum()), max(MIN_TISSUE_PIXELS, int(MIN_TISSUE_SHARE * len(pixels)))
    if found < needed:
        raise StainFitError(f"no tissue pixels to fit the stain model: {found} of {len(pixels)} pixels are "
                            f"darker than the background threshold (need at least {needed})")
    return mask


class PixelNormalizer(Normalizer):
    """A normalizer whose fitted transform maps each RGB value on its own.

    Subclasses fit an image to a parameter object (``_fit``), describe it (``_describe``)
    and build the per-pixel map from slide and target fits (``_pixel_map``). This class
    batches, checks input, and switches to the 256³ lookup table (:mod:`.lut`) when it
    pays: at ``fit_slide`` when ``expected_patches`` reach :data:`.lut.BREAK_EVEN_PIXELS`,
    otherwise once the pixels transformed directly have cost as much as building it
    (:data:`.lut.BUILD_COST_PIXELS`; at most twice the best total). ``lut=True``/``False``
    forces the choice. After ``fit_slide``, ``transform`` may be called from several threads.
    """

    def __init__(self, kind: StainKind, reference: ReferenceLike = None, lut: bool | None = None):
        super().__init__(kind, reference, lut)
        self.reference: Reference = load_reference(reference, kind)
        self.target = self._target_fit()
        self._start(lut)

    @classmethod
    def from_attrs(cls, kind: StainKind, attrs: dict[str, Any], lut: bool | None = None) -> PixelNormalizer:
        """The fitted normalizer a bag's ``stain`` attribute records (from :meth:`to_attrs`),
        so patches re-read from the slide are normalized exactly as the tiler did; the
        reference image is not needed, its fit is in the record."""
        self = cls.__new__(cls)
        Normalizer.__init__(self, kind)
        recorded = attrs["reference"]
        self.reference = Reference(recorded["name"], recorded["sha256"], recorded["source"],
                                   np.zeros((0, 0, 3), np.uint8))
        self.target = self._restore(attrs["target"])
        self._start(lut)
        if attrs.get("slide") is not None:
            self._set_slide(self._restore(attrs["slide"]), 0)
        return self

    def _start(self, lut: bool | None) -> None:
        self.slide: Any = None
        self._lut_mode = lut
        self._map: PixelMap | None = None
        self._lut: np.ndarray | None = None
        self._transformed = 0
        self._count_lock = threading.Lock()
        self._build_lock = threading.Lock()

    def _target_fit(self) -> Any:
        """The reference's fit, computed once per process (see :data:`_TARGET_FITS`)."""
        key = (self.method, self.kind.name, self.reference.sha256)
        fit = _TARGET_FITS.get(key)
        if fit is None:
            try:
                fit = self._fit(as_pixels(self.reference.image))
            except StainFitError as exc:
                raise StainReferenceError(f"stain reference {self.reference.name}: {exc}") from None
            fit = _TARGET_FITS.setdefault(key, fit)
        return fit

    @abstractmethod
    def _fit(self, pixels: np.ndarray) -> Any:
        """Fitted parameters of uint8 pixels (M, 3); StainFitError if they cannot be fitted."""

    @abstractmethod
    def _describe(self, fit: Any) -> dict[str, Any]:
        """JSON-ready form of a fit."""

    @abstractmethod
    def _restore(self, described: dict[str, Any]) -> Any:
        """The fit that ``_describe`` described."""

    @abstractmethod
    def _pixel_map(self, slide: Any, target: Any) -> PixelMap:
        """The per-pixel transform uint8 (M, 3) → uint8 (M, 3) from slide to target."""

    def fit_slide(self, patches: Patches, expected_patches: int | None = None) -> PixelNormalizer:
        pixels = as_pixels(patches)
        count = len(patches) if not isinstance(patches, np.ndarray) or patches.ndim == 4 else 1
        self._set_slide(self._fit(pixels), (expected_patches or 0) * len(pixels) // max(1, count))
        return self

    def _set_slide(self, fit: Any, expected_pixels: int) -> None:
        self.slide = fit
        self._map = self._pixel_map(self.slide, self.target)
        self._lut, self._transformed = None, 0
        if self._lut_mode or (self._lut_mode is None and expected_pixels >= lut_module.BREAK_EVEN_PIXELS):
            self.build_lut()

    def transform(self, batch: np.ndarray) -> np.ndarray:
        if self._map is None:
            raise RuntimeError(f"{self.method} normalizer: call fit_slide() before transform()")
        pixels = as_pixels(batch)
        table = self._lut
        if table is None:
            table = self._maybe_build(len(pixels))
        out = lut_module.apply_lut(table, pixels) if table is not None else self._map(pixels)
        return out.reshape(batch.shape)

    def to_attrs(self) -> dict[str, Any]:
        return {"method": self.method, "kind": self.kind.name, "stains": list(self.kind.stains),
                "reference": self.reference.attrs(), "target": self._describe(self.target),
                "slide": None if self.slide is None else self._describe(self.slide)}

    def _maybe_build(self, pixels: int) -> np.ndarray | None:
        """Count directly transformed pixels; build the table once they cost as much as building it."""
        if self._lut_mode is False:
            return None
        with self._count_lock:
            self._transformed += pixels
            due = self._transformed >= lut_module.BUILD_COST_PIXELS
        if due and self._build_lock.acquire(blocking=False):  # others go on directly meanwhile
            try:
                if self._lut is None:
                    self.build_lut()
            finally:
                self._build_lock.release()
        return self._lut

    @property
    def uses_lut(self) -> bool:
        """Whether transforms go through the 256³ lookup table of the current slide."""
        return self._lut is not None

    def build_lut(self) -> None:
        """Build the current slide's 256³ lookup table now (normally decided automatically)."""
        if self._map is None:
            raise RuntimeError(f"{self.method} normalizer: call fit_slide() before build_lut()")
        log.debug("%s: building the 256³ lookup table", self.method)
        self._lut = lut_module.build_lut(self._map)
