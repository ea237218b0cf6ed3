"""Normalizers by name: ``create_normalizer`` is the one way in (timm's create_model style)."""

from __future__ import annotations

from typing import Any

from .base import Normalizer
from .errors import StainError
from .identity import IdentityNormalizer
from .kinds import KINDS
from .macenko import MacenkoNormalizer
from .reference import ReferenceLike
from .reinhard import ReinhardNormalizer
from .vahadane import VahadaneNormalizer

NORMALIZERS: dict[str, type[Normalizer]] = {
    cls.method: cls for cls in (IdentityNormalizer, MacenkoNormalizer, VahadaneNormalizer, ReinhardNormalizer)
}
METHODS: tuple[str, ...] = tuple(NORMALIZERS)


def create_normalizer(method: str = "none", reference: ReferenceLike = None, kind: str = "he",
                      lut: bool | None = None) -> Normalizer:
    """A normalizer fitted to ``reference`` (None: the packaged default for ``kind``; a path;
    or a uint8 RGB array). ``lut`` forces (True) or forbids (False) the 256³ lookup table;
    None decides from the number of pixels. Raises :class:`StainError` for an unknown method or kind,
    :class:`StainReferenceError` for an unusable reference."""
    if method not in NORMALIZERS:
        raise StainError(f"unknown stain normalization {method!r}; choose from {', '.join(METHODS)}")
    if kind not in KINDS:
        raise StainError(f"unknown stain kind {kind!r}; choose from {', '.join(KINDS)}")
    return NORMALIZERS[method](KINDS[kind], reference=reference, lut=lut)


def restore_normalizer(attrs: dict[str, Any], lut: bool | None = None) -> Normalizer:
    """The fitted normalizer a bag's ``stain`` attribute records, to normalize patches
    re-read from the slide exactly as the tiler did (see ``PixelNormalizer.from_attrs``)."""
    method, kind = attrs.get("method"), attrs.get("kind", "he")
    if method not in NORMALIZERS or kind not in KINDS:
        raise StainError(f"unknown stain record: method {method!r}, kind {kind!r}")
    cls = NORMALIZERS[method]
    if cls is IdentityNormalizer:
        return IdentityNormalizer(KINDS[kind])
    return cls.from_attrs(KINDS[kind], attrs, lut=lut)
