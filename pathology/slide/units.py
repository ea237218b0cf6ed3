"""Lengths in the units OME metadata uses, converted to micrometres.

OME-XML (``PhysicalSizeXUnit``) writes SI symbols (``µm``, ``nm``, ``mm``, ``cm``, ...; µm when
absent, as the OME schema says); OME-Zarr (NGFF ``axes[].unit``) writes UDUNITS-2 names
(``micrometer``, ``nanometer``, ...). Both are mapped here. A unit that is not a length
(``pixel``, ``reference frame``) gives no resolution.
"""

from __future__ import annotations

# micrometres per unit
MICROMETRES: dict[str, float] = {
    "pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "mm": 1e3, "cm": 1e4, "dm": 1e5, "m": 1e6,
    "in": 25400.0, "thou": 25.4, "mil": 25.4,
    "picometer": 1e-6, "angstrom": 1e-4, "nanometer": 1e-3, "micrometer": 1.0, "micron": 1.0,
    "millimeter": 1e3, "centimeter": 1e4, "decimeter": 1e5, "meter": 1e6, "inch": 25400.0,
}
# other spellings of the same units (µ as the Greek letter mu, the micro sign, or a u)
ALIASES = {"μm": "µm", "um": "µm", "micrometre": "micrometer", "millimetre": "millimeter",
           "nanometre": "nanometer", "centimetre": "centimeter", "metre": "meter", "Ångström": "Å"}


def micrometres_per(unit: str) -> float | None:
    """How many µm one ``unit`` is; None for a unit that is not a length this module knows."""
    key = unit.strip()
    key = ALIASES.get(key, key)
    return MICROMETRES.get(key, MICROMETRES.get(key.lower()))
