"""Encoders by name: ``register_encoder`` adds one, ``get_spec`` finds one (timm's create_model style).

A name that is a folder registers the encoder its ``config.json`` describes
(:mod:`pathology.encoders.local`) the first time it is asked for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import InputError
from .local import is_encoder_folder, local_spec
from .spec import EncoderSpec

ENCODERS: dict[str, EncoderSpec] = {}
_ALIASES: dict[str, str] = {}
_FOLDERS: dict[str, str] = {}  # resolved encoder folder -> the name it registered


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
    """The entry for ``name`` (or an alias, or an encoder folder); :class:`InputError` listing
    the known names otherwise."""
    key = _ALIASES.get(name, name)
    if key not in ENCODERS and is_encoder_folder(name):
        return _folder_spec(name)
    if key not in ENCODERS:
        raise InputError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}, or give a folder with a "
                         "config.json (docs: encoders without code)")
    return ENCODERS[key]


def _folder_spec(folder: str) -> EncoderSpec:
    """The encoder of ``folder``, registered once per process under its config's name."""
    where = str(Path(folder).expanduser().resolve())
    if where in _FOLDERS:
        return ENCODERS[_FOLDERS[where]]
    spec = local_spec(where, taken=set(ENCODERS) | set(_ALIASES))
    register_encoder(spec)
    _FOLDERS[where] = spec.name
    return spec
