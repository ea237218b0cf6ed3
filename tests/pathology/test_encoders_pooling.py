"""What the foundation-model entries compute, in values, and the checkpoints they accept.

- Virchow2's embedding is the class token concatenated with the mean of the patch tokens,
  register tokens excluded (Paige's model card: ``output[:, 0]`` ++ ``output[:, 5:].mean(1)``).
- CONCH v1.5 keeps its checkpoint's 224-px position grid and its reference code interpolates
  it for each 448-px input (DINO style: bicubic, no antialiasing, scale (28 + 0.1) / 14); the
  adapter must give that grid.
- Checkpoints with the key names the publishers ship load strictly (built on the meta device:
  the names and shapes, without allocating a billion parameters).
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.layers import SwiGLUPacked
from torch import nn

from pathology.encoders import get_spec
from pathology.encoders.vit import ClassAndMeanTokens
from pathology.encoders.weights import apply_weights

# paige-ai/Virchow2's config.json (model_args) and its model card's create_model call
VIRCHOW2_CARD = dict(img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
                     dynamic_img_size=True, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)


def meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def built(name: str) -> nn.Module:
    with torch.device("meta"):
        return get_spec(name).build()


# ---------------------------------------------------------------- Virchow2

def test_virchow2_pooling_is_class_token_and_mean_patch_token_without_registers():
    """The entry's pooling module on a small ViT of the same family (random weights, 4 registers,
    SwiGLU), against the model card's formula applied by hand to ``forward_features``."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_huge_patch14_224", pretrained=False, **{**VIRCHOW2_CARD, "img_size": 56},
                            embed_dim=160, depth=2, num_heads=4).eval()
    with torch.no_grad():
        vit.reg_token.normal_(0, 5.0)     # registers far from the patches: including them would show
    x = torch.rand(3, 3, 56, 56)
    with torch.no_grad():
        tokens = vit.forward_features(x)  # (B, 1 class + 4 registers + 16 patches, D)
        pooled = ClassAndMeanTokens(vit)(x)
    assert tokens.shape == (3, 1 + 4 + 16, 160)
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(dim=1)], dim=-1)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)
    with_registers = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)
    assert (pooled - with_registers).abs().max() > 1e-2


def test_the_virchow2_entry_has_the_cards_token_layout():
    """On the real architecture: 1 class + 4 register + 256 patch tokens of 1280, pooled to 2560."""
    model = built("virchow2")
    assert isinstance(model, ClassAndMeanTokens) and model.vit.num_prefix_tokens == 5
    with torch.device("meta"):
        tokens = model.vit(torch.empty(2, 3, 224, 224))
        pooled = model(torch.empty(2, 3, 224, 224))
    assert tuple(tokens.shape) == (2, 261, 1280) and tuple(pooled.shape) == (2, 2560)


def test_virchow2_published_checkpoint_layout_loads_strictly():
    """Paige's pytorch_model.bin is the state dict of timm's vit_huge_patch14_224 built with the
    card's arguments (timm key names, no wrapper prefix)."""
    with torch.device("meta"):
        published = timm.create_model("vit_huge_patch14_224", pretrained=False, **VIRCHOW2_CARD)
    shapes = {k: tuple(v.shape) for k, v in published.state_dict().items()}
    # spot checks of the layout, from the card: 32 blocks, packed SwiGLU of 6832, 4 registers
    assert shapes["reg_token"] == (1, 4, 1280) and shapes["pos_embed"] == (1, 261, 1280)
    assert shapes["blocks.31.mlp.fc1.weight"] == (6832, 1280) and shapes["blocks.31.mlp.fc2.weight"] == (1280, 3416)
    assert not any(k.startswith("vit.") for k in shapes)
    spec, model = get_spec("virchow2"), built("virchow2")
    apply_weights(model, spec, meta_state(shapes), "pytorch_model.bin", assign=True)   # raises on any misfit
    assert model.vit.reg_token.shape == (1, 4, 1280)


# ---------------------------------------------------------------- CONCH v1.5

def conch_published_shapes(grid: int = 14) -> dict[str, tuple[int, ...]]:
    """Keys of MahmoodLab/conchv1_5's pytorch_model_vision.bin, from the publisher's vision tower:
    ``trunk`` a ViT-L/16 (1024-d, 24 blocks, MLP 4096, LayerScale) at the default 224 px (a 14 x 14
    position grid), ``attn_pool_contrast`` CoCa's attentional pooler (one 768-d query, no biases)
    and ``ln_contrast``."""
    d, shapes = 1024, {"trunk.cls_token": (1, 1, 1024), "trunk.pos_embed": (1, 1 + grid * grid, 1024),
                       "trunk.patch_embed.proj.weight": (1024, 3, 16, 16), "trunk.patch_embed.proj.bias": (1024,)}
    for i in range(24):
        b = f"trunk.blocks.{i}."
        shapes.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                       b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                       b + "ls1.gamma": (d,), b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                       b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
                       b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,), b + "ls2.gamma": (d,)})
    shapes.update({"trunk.norm.weight": (d,), "trunk.norm.bias": (d,), "attn_pool_contrast.query": (1, 768),
                   "attn_pool_contrast.ln_k.weight": (d,), "attn_pool_contrast.ln_k.bias": (d,),
                   "attn_pool_contrast.ln_q.weight": (768,), "attn_pool_contrast.ln_q.bias": (768,),
                   "attn_pool_contrast.to_q.weight": (768, 768), "attn_pool_contrast.to_kv.weight": (1536, d),
                   "attn_pool_contrast.to_out.weight": (768, 768), "ln_contrast.weight": (768,),
                   "ln_contrast.bias": (768,)})
    return shapes


def test_conch_published_checkpoint_layout_loads_strictly():
    spec, model = get_spec("conch-v1.5"), built("conch-v1.5")
    apply_weights(model, spec, meta_state(conch_published_shapes()), "pytorch_model_vision.bin", assign=True)
    assert model.trunk.pos_embed.shape == (1, 1 + 28 * 28, 1024)    # the grid of a 448-px input


def test_conch_position_grid_is_resampled_as_the_reference_model_does_at_448_px():
    torch.manual_seed(0)
    d = 1024
    # a smooth grid (trained position embeddings are) plus noise, and a class-token embedding
    y, x = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    freq = torch.rand(d, 2)
    grid = torch.sin(freq[:, :1, None] * y + freq[:, 1:, None] * x) + 0.1 * torch.randn(d, 14, 14)  # (D, 14, 14)
    cls = torch.randn(1, 1, d)
    pos = torch.cat([cls, grid.permute(1, 2, 0).reshape(1, 196, d)], dim=1)
    state = {"trunk.pos_embed": pos}
    adapted = get_spec("conch-v1.5").adapt(state, built("conch-v1.5"))["trunk.pos_embed"]

    # the reference (DINO-style interpolate_pos_encoding) for a 448 x 448 input, by hand
    reference = F.interpolate(grid[None], scale_factor=(28.1 / 14, 28.1 / 14), mode="bicubic", align_corners=False)
    assert reference.shape == (1, d, 28, 28)
    expected = torch.cat([cls, reference.permute(0, 2, 3, 1).reshape(1, 784, d)], dim=1)
    torch.testing.assert_close(adapted, expected, rtol=0, atol=1e-6)


def test_conch_resampling_keeps_the_grid_orientation():
    """A known grid: a value that depends on the column only stays so, increasing left to right,
    and the class token is untouched (a transposed or shifted grid would fail here)."""
    d = 8
    column = torch.arange(14.0).repeat(14, 1)                           # (14 rows, 14 columns)
    grid = column[None].repeat(d, 1, 1)
    pos = torch.cat([torch.full((1, 1, d), -7.0), grid.permute(1, 2, 0).reshape(1, 196, d)], dim=1)
    target = nn.Module()
    target.trunk = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=448,
                                     embed_dim=d, depth=1, num_heads=1)
    adapted = get_spec("conch-v1.5").adapt({"trunk.pos_embed": pos}, target)["trunk.pos_embed"]
    assert adapted.shape == (1, 1 + 28 * 28, d)
    assert (adapted[0, 0] == -7.0).all()
    new = adapted[0, 1:, 0].reshape(28, 28)
    torch.testing.assert_close(new, new[:1].expand(28, 28))             # constant down each column
    assert (new[0, 1:] > new[0, :-1]).all()                             # increasing left to right
    assert new[0, 0] < 0.5 and 12.5 < new[0, -1] < 13.5                 # spans the old columns 0..13
