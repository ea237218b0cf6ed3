"""How a trained run wants its slides prepared: the tiling and encoder settings stored in
its ``config.json`` (:class:`mil.runconfig.RunConfig`'s ``bag_settings``), turned back into
options, and checked.

A model is only ever applied the way it was trained: the same patch size, resolution,
tissue and stain parameters, and features from the same encoder weights. Anything that
cannot be reproduced is an error before any slide is touched.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mil.runconfig import CONFIG_NAME, FeatureAttrs, RunConfig

from ..encoders import Encoder
from ..errors import UserError
from ..hashing import file_sha256
from ..tiling.pipeline import TileOptions


class SettingsError(UserError):
    """The run cannot be applied to slides as it was trained (one line, naming the cause)."""


def tile_options(config: RunConfig, run_dir: Path, *, mpp: float | None = None, stain_ref: Path | None = None,
                 backend: str | None = None) -> TileOptions:
    """The run's tiling options; ``mpp`` and ``backend`` are per-batch choices, not the model's.

    A custom stain reference is stored by content (SHA-256): pass the same file again."""
    params = config.tile_params
    if not params:
        raise SettingsError(f"{run_dir / CONFIG_NAME}: the run was trained on features made elsewhere "
                            "(no tiling settings); `pathology run` needs a run trained on `pathology tile` bags")
    try:
        options = TileOptions.from_params(params)
    except TypeError as exc:
        raise SettingsError(f"{run_dir / CONFIG_NAME}: tiling settings from another version ({exc})") from None
    recorded = options.stain_ref
    if recorded:
        if stain_ref is None:
            raise SettingsError(f"the run was trained with a custom stain reference (sha256 {recorded[:12]}…); "
                                "pass the same file with --stain-ref")
        digest = file_sha256(stain_ref)
        if digest != recorded:
            raise SettingsError(f"--stain-ref {stain_ref}: sha256 {digest[:12]}… differs from the training "
                                f"reference {recorded[:12]}…")
    changes = {"mpp": mpp, "stain_ref": str(stain_ref) if recorded else None}
    if backend:
        changes["backend"] = backend
    return replace(options, **changes)


def encoder_settings(config: RunConfig, run_dir: Path) -> FeatureAttrs:
    """The recorded encoder attrs (``encoder``, ``weights_sha256``, ``dim``, ...)."""
    features = config.feature_attrs
    if features is None or not features.encoder:
        raise SettingsError(f"{run_dir / CONFIG_NAME}: no encoder recorded for the run's features "
                            f"{config.features!r}")
    return features


def check_encoder(encoder: Encoder, features: FeatureAttrs) -> None:
    """Refuse an encoder whose weights or output differ from the ones the run was trained on."""
    if encoder.spec.name != features.encoder:
        raise SettingsError(f"encoder {encoder.spec.name!r} differs from the run's {features.encoder!r}")
    if features.dim is not None and features.dim != encoder.spec.dim:
        raise SettingsError(f"encoder {encoder.spec.name} gives {encoder.spec.dim}-d features, "
                            f"the run was trained on {features.dim}-d")
    trained = features.weights_sha256
    if trained and trained != encoder.weights_sha256:
        where = f" ({encoder.weights_path})" if encoder.weights_path else ""
        raise SettingsError(f"encoder {encoder.spec.name} weights{where} have sha256 {encoder.weights_sha256[:12]}…, "
                            f"the run was trained on {trained[:12]}…; pass the same file with --weights")
