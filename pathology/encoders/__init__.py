"""Feature encoders: a registry of patch encoders and the weights they load.

    from pathology.encoders import ENCODERS, load_encoder
    encoder = load_encoder("resnet50-trunc", weights="resnet50-0676ba61.pth")  # or the local cache
    features = encoder(uint8_patches)   # torch uint8 (B, H, W, 3) -> float32 (B, encoder.spec.dim)

Entries register themselves (:func:`register_encoder`); weights are read only from
``--weights`` or the local Hugging Face / torch caches, never downloaded implicitly
(``pathology encoders fetch NAME`` does that on request).
"""

from . import cnn, default, vit  # noqa: F401  (register the entries)
from .load import Encoder, load_encoder, select_device, select_precision
from .registry import ENCODERS, get_spec, register_encoder
from .spec import EncoderSpec, WeightSource
from .weights import WeightsError, locate_weights, read_checkpoint

__all__ = ["ENCODERS", "Encoder", "EncoderSpec", "WeightSource", "WeightsError", "get_spec", "load_encoder",
           "locate_weights", "read_checkpoint", "register_encoder", "select_device", "select_precision"]
