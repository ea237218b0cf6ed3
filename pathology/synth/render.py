"""Procedural H&E tissue: any level-0 region of a synthetic slide, rendered on its own.

Per pixel the renderer works out how much tissue, tumor epithelium, stroma and
nuclei are present, mixes the recipe's stain concentrations from them, and turns
the concentrations into colour through Beer–Lambert:
``OD = background + Σ_s c_s · v_s`` and ``RGB = 255 · exp(−OD)``.
Every quantity is a function of absolute position and the seed, so regions
rendered separately join without seams.
"""

from __future__ import annotations

import math

import numpy as np

from .config import SynthConfig
from .fields import SlideFields, make_fields
from .noise import field_at, periodic_lookup, sub_key, upsample_field, value_noise, value_noise_at
from .nuclei import banks_for, place, splat
from .recipe import RECIPES, Recipe
from .textures import EDGE_UM, FIBRE_ANGLES, textures_for

_GRAIN_OD = 0.006          # faint glass and tissue noise, in OD units
_TUMOR_RAMP_UM = 12.0      # width of the tumor/stroma transition
_LYMPH_RIM_UM = 60.0       # reach of the lymphocyte rim around tumor
_SLOW = 8                  # slowly varying fields are evaluated once per 8x8 pixels
_LN255 = np.float32(math.log(255))


def _cos2(u: np.ndarray) -> np.ndarray:
    return np.cos(4 * np.pi * u)


def _sin2(u: np.ndarray) -> np.ndarray:
    return np.sin(4 * np.pi * u)


class SlideRenderer:
    """Renders regions of the synthetic slide described by a :class:`SynthConfig`."""

    def __init__(self, config: SynthConfig, fields: SlideFields | None = None):
        """``fields`` reuses the layout already made for this config (worker processes)."""
        self.config = config
        root = np.random.SeedSequence(config.seed)
        layout, stains, offsets = (np.random.default_rng(s) for s in root.spawn(3))
        self.key = int(root.generate_state(1)[0])
        self.recipe: Recipe = RECIPES[config.recipe].varied(stains, config.stain_variation)
        self.fields: SlideFields = fields or make_fields(layout, config.width, config.height,
                                                         config.mask_downsample, config.mpp, config.tumor_fraction)
        self.px = 1.0 / config.mpp  # pixels per µm
        self.tex = textures_for(config.mpp)
        self.offset = tuple(int(v) for v in offsets.integers(0, 2 ** 20, 2))
        self.banks = banks_for(config.recipe, config.mpp)
        self.stain_names = list(self.recipe.stains)
        scale = np.array([self.recipe.stain_scale(s) for s in self.stain_names], np.float32)
        self.stain_od = self.recipe.stain_matrix() * scale[:, None]
        self.glass = self._to_rgb(self._glass_log(self.tex.grain))
        self.textures = {"fibres": self._fibres, "mottle": self._mottle}
        """Compartment textures by the name a :class:`Compartment` gives (mean about 1)."""
        unknown = {c.texture for c in self.recipe.compartments.values()} - set(self.textures)
        if unknown:
            raise ValueError(f"recipe {self.recipe.name!r} uses unknown textures {sorted(unknown)}")

    # -- compartments: one definition, evaluated on pixel grids and at nucleus centres ----
    def _key(self, salt: int) -> int:
        return sub_key(self.key, salt)

    def _lookup(self, texture: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return periodic_lookup(texture, x0 + self.offset[0], y0 + self.offset[1], w, h)

    def _soft(self, sd_samples: np.ndarray, um: float) -> np.ndarray:
        """0→1 ramp across a coarse field's edge, ``um`` wide."""
        out = sd_samples * np.float32(self.fields.ds / (um * self.px))
        out += 0.5
        return np.clip(out, 0, 1, out=out)

    @staticmethod
    def _nest(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
        """Tumor nests (1) versus the stroma septa between them (0)."""
        out = coarse + 0.06 * fine
        out -= 0.42
        out *= 25
        return np.clip(out, 0, 1, out=out)

    def _gate(self, region: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Share of ``region`` at level-0 pixels ``x``, ``y``: where nuclei of a kind may sit."""
        ds, px, fine = self.fields.ds, self.px, self.tex.fine
        tissue = (field_at(self.fields.tissue, ds, x, y) > 0).astype(np.float32)
        tumor_sd = field_at(self.fields.tumor, ds, x, y)
        nest = self._nest(value_noise_at(x, y, 45 * px, self._key(10)),
                          fine[(y + self.offset[1]) % fine.shape[0], (x + self.offset[0]) % fine.shape[1]])
        epi = self._soft(tumor_sd, _TUMOR_RAMP_UM) * nest
        if region == "epithelium":
            return tissue * epi
        if region == "stroma":
            return tissue * (1 - epi)
        if region == "lymphoid":
            cluster = np.clip((value_noise_at(x, y, 110 * px, self._key(12)) - 0.62) / 0.15, 0, 1)
            rim = self._soft(tumor_sd, _LYMPH_RIM_UM)
            return tissue * (1 - 0.8 * epi) * (0.03 + 0.6 * cluster + 0.35 * rim * (1 - rim))
        raise ValueError(f"unknown nucleus region {region!r}")

    def _fibre_angle(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Local collagen direction (radians, mod π) at level-0 pixels."""
        spacing, key = 150 * self.px, self._key(13)
        c, s = value_noise_at(x, y, spacing, key, _cos2), value_noise_at(x, y, spacing, key, _sin2)
        return np.arctan2(s, c) / 2 % np.pi

    # -- textures (mean about 1) -------------------------------------------------------------
    def _fibres(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Collagen: oriented wavy streaks blended by a slowly turning direction, denser and
        looser in patches. The blend weights and density are computed per 8x8 pixels, on
        a grid anchored at level-0 multiples of 8 so any box gets the same values."""
        a = _SLOW
        ax0, ay0 = x0 - x0 % a, y0 - y0 % a
        cw, ch = -(-(x0 + w - ax0) // a), -(-(y0 + h - ay0) // a)
        spacing, key = 150 * self.px / a, self._key(13)
        c2 = value_noise(ax0 // a, ay0 // a, cw, ch, spacing, key, _cos2)
        s2 = value_noise(ax0 // a, ay0 // a, cw, ch, spacing, key, _sin2)
        weights = [np.maximum(c2 * math.cos(2 * t) + s2 * math.sin(2 * t), 0) ** 2 for t in FIBRE_ANGLES]
        norm = np.sqrt(sum(wk * wk for wk in weights)) + np.float32(0.05)  # fades, not flickers, where
        # the direction is undefined (the blend is piecewise constant on the 8x8 grid)
        acc = np.zeros((ch, a, cw, a), np.float32)
        for tex, wk in zip(self.tex.fibres, weights, strict=True):
            streaks = self._lookup(tex, ax0, ay0, cw * a, ch * a).reshape(ch, a, cw, a)
            streaks *= (wk / norm)[:, None, :, None]
            acc += streaks
        clefts = np.clip((acc + 2.2) * 2.5, 0.15, 1)
        acc *= 0.3
        acc += 1
        np.clip(acc, 0.4, 1.6, out=acc)
        acc *= clefts
        density = 0.75 + 0.5 * value_noise(ax0 // a, ay0 // a, cw, ch, 90 * self.px / a, self._key(14))
        acc *= density[:, None, :, None]
        return acc.reshape(ch * a, cw * a)[y0 - ay0:y0 - ay0 + h, x0 - ax0:x0 - ax0 + w]

    def _mottle(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Granular cytoplasm."""
        return self._lookup(self.tex.mottle, x0, y0, w, h)

    # -- pixels ------------------------------------------------------------------------------
    def _glass_log(self, grain: np.ndarray) -> np.ndarray:
        """ln(RGB) of bare glass, (3, h, w) float32: ln 255 − background OD − grain."""
        log = np.empty((3, *grain.shape), np.float32)
        grain = grain * np.float32(-_GRAIN_OD)
        for ch, bg in enumerate(self.recipe.background_od):
            np.add(grain, _LN255 - np.float32(bg), out=log[ch])
        return log

    @staticmethod
    def _to_rgb(log: np.ndarray) -> np.ndarray:
        """(3, h, w) float32 ln(RGB) → (h, w, 3) uint8, rounded (``log`` is consumed)."""
        out = np.empty((*log.shape[1:], 3), np.uint8)
        for ch in range(3):
            np.minimum(log[ch], _LN255, out=log[ch])
            np.exp(log[ch], out=log[ch])
            np.add(log[ch], 0.5, out=out[..., ch], casting="unsafe")
        return out

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the level-0 box with top-left (x0, y0); may extend past the slide."""
        out = self._lookup(self.glass, x0, y0, w, h)
        ds, margin = self.fields.ds, 5 * EDGE_UM * self.px + 1  # the outline strays this far at most
        fh, fw = self.fields.tissue.shape
        # bilinear values never exceed the coarse samples around them: skip bare glass cheaply
        r0, c0 = max(0, math.floor((y0 + 0.5) / ds - 0.5)), max(0, math.floor((x0 + 0.5) / ds - 0.5))
        r1, c1 = math.floor((y0 + h - 0.5) / ds - 0.5) + 2, math.floor((x0 + w - 0.5) / ds - 0.5) + 2
        window = self.fields.tissue[min(r0, fh - 1):max(r1, 1), min(c0, fw - 1):max(c1, 1)]
        if window.size == 0 or window.max() * ds <= -margin:
            return out
        sd = upsample_field(self.fields.tissue, ds, x0, y0, w, h)
        sd *= ds  # level-0 pixels to the tissue edge
        near = sd > -margin
        if not near.any():
            return out
        rows, cols = np.flatnonzero(near.any(axis=1)), np.flatnonzero(near.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        tissue, rgb = self._tissue(x0 + c0, y0 + r0, c1 - c0, r1 - r0, sd[r0:r1, c0:c1])
        np.copyto(out[r0:r1, c0:c1], rgb, where=(tissue > 0)[..., None])
        return out

    def _tissue(self, x0: int, y0: int, w: int, h: int, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tissue coverage (h, w) and RGB of a box that holds tissue (``sd``: pixels to its edge)."""
        sd += 0.5
        sd += self._lookup(self.tex.edge, x0, y0, w, h)
        tissue = np.clip(sd, 0, 1, out=sd)
        tumor = self._soft(upsample_field(self.fields.tumor, self.fields.ds, x0, y0, w, h), _TUMOR_RAMP_UM)
        epi = tumor * self._nest(value_noise(x0, y0, w, h, 45 * self.px, self._key(10)),
                                 self._lookup(self.tex.fine, x0, y0, w, h))
        weights = {"stroma": 1 - epi, "epithelium": epi}
        placed = [place(b, self._key(100 + i), x0, y0, w, h, self._gate, self._fibre_angle)
                  for i, b in enumerate(self.banks)]
        nuclei, cover = splat(placed, self.stain_names, x0, y0, w, h)
        np.minimum(cover, 1, out=cover)
        cyto = tissue * (1 - cover)
        base = {}
        for name, comp in self.recipe.compartments.items():
            base[name] = cyto * weights[name]
            if comp.texture_amount:
                texture = self.textures[comp.texture](x0, y0, w, h)
                texture *= np.float32(comp.texture_amount)
                texture += np.float32(1 - comp.texture_amount)
                base[name] *= texture
        log = self._glass_log(self._lookup(self.tex.grain, x0, y0, w, h))
        for s, name in enumerate(self.stain_names):
            conc = nuclei[s]
            conc *= tissue
            for cname, comp in self.recipe.compartments.items():
                if comp.stains.get(name):
                    conc += np.float32(comp.stains[name]) * base[cname]
            for ch in range(3):
                log[ch] -= np.float32(self.stain_od[s, ch]) * conc
        return tissue, self._to_rgb(log)
