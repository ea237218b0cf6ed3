"""Pathology foundation models (vision transformers), built with timm.

Each entry states its publisher's repository and licence as given on the model card
(several are gated: the publisher approves each user on the Hugging Face Hub). Weights
are never downloaded implicitly: ``pathology encoders fetch NAME`` or ``--weights FILE``.
The architectures and output tokens follow the publishers' model cards; the checkpoints
they distribute load as they are (timm key names, or Hugging Face DINOv2 keys for
Phikon-v2, converted by :func:`.adapters.hf_dinov2_to_timm`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import timm
import torch
from timm.layers import SwiGLUPacked
from torch import nn

from .adapters import add_prefix, fit_pos_embed, hf_dinov2_to_timm, resample_like_dino
from .registry import encoder_entry
from .spec import EncoderSpec, WeightSource

NC_ND = "CC-BY-NC-ND-4.0"


def timm_vit(arch: str, **kwargs) -> Callable[[], nn.Module]:
    """A builder for a headless timm ViT (``num_classes=0``: pooled class token out)."""
    return partial(timm.create_model, arch, pretrained=False, num_classes=0, **kwargs)


class ClassAndMeanTokens(nn.Module):
    """Virchow's embedding: the class token concatenated with the mean of the patch tokens
    (register tokens excluded), as its model card prescribes."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit(x)  # (B, prefix + patches, D) with global_pool=""
        prefix = self.vit.num_prefix_tokens
        return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=-1)


class AttentionalPooler(nn.Module):
    """Cross-attention of learned queries to the tokens (CoCa's pooler, as in CONCH)."""

    def __init__(self, dim: int, context_dim: int, heads: int = 8, queries: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(queries, dim))
        self.ln_k, self.ln_q = nn.LayerNorm(context_dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, dim * 2, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, h = tokens.shape[0], self.heads
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)
        split = lambda t: t.unflatten(-1, (h, -1)).transpose(1, 2)
        out = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).flatten(2))


class ConchV15(nn.Module):
    """CONCH v1.5's vision tower: ViT-L/16 at 448 px, attentional pooling to 768-d, LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, img_size=448,
                                       init_values=1.0, global_pool="")
        self.attn_pool_contrast = AttentionalPooler(768, 1024, heads=8, queries=1)
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_contrast(self.attn_pool_contrast(self.trunk(x))[:, 0])


def _hf(repo: str, file: str, licence: str, gated: bool = True) -> WeightSource:
    return WeightSource(hf_repo=repo, hf_file=file, licence=licence, gated=gated,
                        homepage=f"https://huggingface.co/{repo}")


@encoder_entry
def uni() -> EncoderSpec:
    return EncoderSpec(
        name="uni", dim=1024, input_size=224,
        build=timm_vit("vit_large_patch16_224", img_size=224, init_values=1e-5, dynamic_img_size=True),
        weights=_hf("MahmoodLab/UNI", "pytorch_model.bin", NC_ND), precision="fp16",
        architecture="timm vit_large_patch16_224, class token", description="UNI (Chen et al. 2024), ViT-L/16 DINOv2")


@encoder_entry
def uni2_h() -> EncoderSpec:
    return EncoderSpec(
        name="uni2-h", dim=1536, input_size=224,
        build=timm_vit("vit_giant_patch14_224", img_size=224, patch_size=14, depth=24, num_heads=24,
                       init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2, no_embed_class=True,
                       mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, reg_tokens=8, dynamic_img_size=True),
        weights=_hf("MahmoodLab/UNI2-h", "pytorch_model.bin", NC_ND),
        architecture="timm ViT-H/14 SwiGLU, 8 registers, class token", description="UNI2-h, ViT-H/14 DINOv2")


@encoder_entry
def conch_v15() -> EncoderSpec:
    return EncoderSpec(
        name="conch-v1.5", dim=768, input_size=448, build=ConchV15,
        weights=_hf("MahmoodLab/conchv1_5", "pytorch_model_vision.bin", NC_ND),
        adapt=fit_pos_embed(module="trunk", resample=resample_like_dino), precision="fp16",
        architecture="timm ViT-L/16 at 448 px + attentional pooler + LayerNorm",
        description="CONCH v1.5 vision tower (TITAN's patch encoder)")


@encoder_entry
def virchow2() -> EncoderSpec:
    return EncoderSpec(
        name="virchow2", dim=2560, input_size=224,
        build=lambda: ClassAndMeanTokens(timm.create_model(
            "vit_huge_patch14_224", pretrained=False, num_classes=0, img_size=224, init_values=1e-5,
            mlp_ratio=5.3375, global_pool="", reg_tokens=4, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU,
            dynamic_img_size=True)),
        weights=_hf("paige-ai/Virchow2", "pytorch_model.bin", NC_ND), adapt=add_prefix("vit."), precision="fp16",
        architecture="timm ViT-H/14 SwiGLU, 4 registers; class token ++ mean patch token",
        description="Virchow2 (Zimmermann et al. 2024)")


@encoder_entry
def h_optimus_0() -> EncoderSpec:
    return EncoderSpec(
        name="h-optimus-0", dim=1536, input_size=224,
        build=timm_vit("vit_giant_patch14_reg4_dinov2", img_size=224, init_values=1e-5, dynamic_img_size=False),
        weights=_hf("bioptimus/H-optimus-0", "pytorch_model.bin", "Apache-2.0", gated=False),
        mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517), precision="fp16",
        architecture="timm ViT-g/14 DINOv2, 4 registers, class token", description="H-optimus-0 (Bioptimus)")


@encoder_entry
def prov_gigapath() -> EncoderSpec:
    return EncoderSpec(
        name="prov-gigapath", dim=1536, input_size=224,
        build=timm_vit("vit_giant_patch14_dinov2", img_size=224, in_chans=3, patch_size=16, embed_dim=1536,
                       depth=40, num_heads=24, init_values=1e-5, mlp_ratio=5.33334),
        weights=_hf("prov-gigapath/prov-gigapath", "pytorch_model.bin", "Apache-2.0"),
        precision="fp16", architecture="timm ViT-g/16 DINOv2, class token",
        description="Prov-GigaPath tile encoder (Xu et al. 2024)")


@encoder_entry
def phikon_v2() -> EncoderSpec:
    return EncoderSpec(
        name="phikon-v2", dim=1024, input_size=224,
        build=timm_vit("vit_large_patch16_224", img_size=224, init_values=1e-5),
        weights=_hf("owkin/phikon-v2", "model.safetensors", "Owkin non-commercial",
                    gated=False),
        adapt=hf_dinov2_to_timm, precision="fp16",
        architecture="ViT-L/16 DINOv2 (Hugging Face Dinov2Model keys converted to timm), class token",
        description="Phikon-v2 (Owkin)")
