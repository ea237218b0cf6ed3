"""``stain-texture``: the offline default encoder (fixed filters, nothing to download).

Colour deconvolution into hematoxylin, eosin and DAB, then multi-scale filter-bank
statistics (see :mod:`.handcrafted`). It is what the demo and tests use: far faster than
a CNN on a CPU, and its features separate tumour, stroma and background on real H&E
(``tests/test_encoder_handcrafted.py``).
"""

from __future__ import annotations

from torch import nn

from .registry import encoder_entry
from .spec import EncoderSpec, WeightSource


def _build() -> nn.Module:
    from .handcrafted import StainTextureEncoder
    return StainTextureEncoder()


def _dim() -> int:
    from .handcrafted import StainTextureEncoder
    return StainTextureEncoder.dim


@encoder_entry
def stain_texture() -> EncoderSpec:
    return EncoderSpec(
        name="stain-texture", dim=_dim(), input_size=None, build=_build,
        weights=WeightSource(licence="Apache-2.0 (this project)"),
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), precision="fp32",
        architecture="H/E/DAB deconvolution + multi-scale filter bank statistics",
        description="offline default: fixed stain and texture features, no download", aliases=("default",))
