"""Stain normalization of patches: Macenko, Vahadane, Reinhard, or none.

Usage in the pipeline — fit once to a reference, once per slide, then transform batches::

    from pathology.stain import create_normalizer

    normalizer = create_normalizer("macenko", reference=None, kind="he")  # fits the reference (once per process)
    normalizer.fit_slide(sample)        # uint8 (N, H, W, 3) or a list of patches from ONE slide
    out = normalizer.transform(batch)   # uint8 (N, H, W, 3) -> uint8 (N, H, W, 3), thread-safe
    attrs = normalizer.to_attrs()       # JSON-ready, stored as the bag's ``stain`` attribute

``create_normalizer(method, reference=None, kind="he", lut=None)``

- ``method``: one of :data:`METHODS` (``none``, ``macenko``, ``vahadane``, ``reinhard``),
  looked up in the :data:`NORMALIZERS` registry. ``none`` reads nothing, fits nothing
  and returns every batch untouched.
- ``reference``: ``None`` for the packaged default of ``kind`` (H&E: a CC0 crop of the CMU-1
  slide; IHC: scikit-image's ``ihc.png``; see ``references/README.md``), a file path, or a
  uint8 RGB array. An unreadable file raises :class:`StainReferenceError` naming it.
- ``kind``: ``"he"`` (hematoxylin + eosin) or ``"ihc"`` (hematoxylin + DAB). IHC fits its
  two stain vectors as hematoxylin and DAB by angle to the standard colour-deconvolution
  vectors and normalizes against an IHC reference, so DAB stays brown; the H&E rule would
  take DAB for eosin and turn it pink (:mod:`.kinds`). Reinhard with ``kind="ihc"`` uses the
  IHC reference, and a user reference for IHC must itself be an IHC image. The tile
  command's default is ``none`` for every kind: IHC is quantified from DAB, which
  normalization should not alter unless asked (``--stain macenko|vahadane --kind ihc``).
- ``lut``: after ``fit_slide`` every method is a per-pixel function of the RGB value,
  evaluated directly (:mod:`.kernel`, :mod:`.reinhard`) or through a 256³ lookup table
  (:mod:`.lut`, 64 MiB, bit-identical). ``None`` builds the table when
  ``fit_slide(..., expected_patches=n)`` says enough pixels are coming, or else after as
  many pixels have been transformed as the table costs to build; ``True``/``False`` force it.

``fit_slide`` raises :class:`StainFitError` (a ValueError) with a one-line message when the
sample cannot be fitted, e.g. it holds no tissue pixels (CIELAB L ≥ 0.8 everywhere).

Agreement with staintools 2.1.2 (the reference implementation), normalizing a real H&E
image to another: Reinhard identical; Macenko 97 dB PSNR (1 pixel value in 10⁵ differs
by 1, float32 rounding); Vahadane ~55 dB (ours learns the dictionary deterministically,
staintools for one wall-clock second, so two staintools runs differ too: 60-66 dB).
Throughput is 50-200× staintools' for Macenko (``benchmarks/bench_stain.py``; assertions
in ``tests/test_stain.py``).
"""

from .base import Normalizer, PixelNormalizer
from .errors import StainError, StainFitError, StainReferenceError
from .kinds import KINDS, StainKind
from .registry import METHODS, NORMALIZERS, create_normalizer, restore_normalizer

__all__ = ["KINDS", "METHODS", "NORMALIZERS", "Normalizer", "PixelNormalizer", "StainError", "StainFitError",
           "StainKind", "StainReferenceError", "create_normalizer", "restore_normalizer"]
