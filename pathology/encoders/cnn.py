"""``resnet50-trunc``: ImageNet ResNet-50 cut after layer 3, average-pooled to 1024-d.

The classic MIL baseline (CLAM, TransMIL, DSMIL papers). It loads torchvision's ImageNet
checkpoint as distributed (``resnet50-0676ba61.pth``) or timm's ``resnet50.tv_in1k``
safetensors (same keys); layer 4 and the classifier are dropped explicitly.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet50

from .adapters import drop_prefixes
from .registry import encoder_entry
from .spec import EncoderSpec, WeightSource


class ResNet50Trunk(nn.Module):
    """ResNet-50 stem and layers 1-3, then global average pooling: (B, 3, H, W) → (B, 1024)."""

    def __init__(self) -> None:
        super().__init__()
        full = resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
            setattr(self, name, getattr(full, name))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)


@encoder_entry
def resnet50_trunc() -> EncoderSpec:
    return EncoderSpec(
        name="resnet50-trunc", dim=1024, input_size=224, build=ResNet50Trunk,
        weights=WeightSource(url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
                             licence="BSD-3-Clause (ImageNet-1k terms)",
                             homepage="https://pytorch.org/vision/stable/models/generated/torchvision.models.resnet50.html"),
        precision="fp16", channels_last=True, adapt=drop_prefixes("layer4.", "fc."),
        architecture="torchvision resnet50, layers 1-3 + global average pool",
        description="ImageNet ResNet-50 truncated after layer 3 (CLAM's baseline)")
