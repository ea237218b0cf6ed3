"""Encoders by name: ``register_encoder`` adds one, ``get_spec`` finds one (timm's create_model style)."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InputError
from .spec import EncoderSpec

ENCODERS: dict[str, EncoderSpec] = {}
_ALIASES: dict[str, str] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add ``spec`` to the registry (its name and aliases must be new)."""
    for key in (spec.name, *spec.aliases):
        if key in ENCODERS or key in _ALIASES:
            raise ValueError(f"encoder name {key!r} is already registered")
    ENCODERS[spec.name] = spec
    _ALIASES.update(dict.fromkeys(spec.aliases, spec.name))
    return spec


def encoder_entry(fn: Callable[[], EncoderSpec]) -> Callable[[], EncoderSpec]:
    """Decorator: register the spec that ``fn`` returns (keeps each entry's imports local)."""
    register_encoder(fn())
    return fn


def get_spec(name: str) -> EncoderSpec:
    """The entry for ``name`` (or an alias); :class:`InputError` listing the known names otherwise."""
    key = _ALIASES.get(name, name)
    if key not in ENCODERS:
        raise InputError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}")
    return ENCODERS[key]
