"""What a synthetic slide is made of, as data: stains, compartments and nucleus kinds.

The renderer mixes stain concentrations per pixel from these recipes and turns them
into colour through Beer–Lambert, so a new look (IHC with DAB, another counterstain,
a biomarker-dependent recipe) is a new :class:`Recipe`, not a new code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class NucleusKind:
    """One population of nuclei, placed on a jittered grid and drawn from a sprite bank.

    Lengths are in µm. ``region`` names the soft compartment field (``epithelium``,
    ``stroma`` or ``lymphoid``) that, times ``density``, gives the chance that a grid
    cell holds a nucleus of this kind.
    """

    name: str
    region: str
    spacing_um: float
    density: float
    radius_um: float
    radius_sd: float
    elongation: tuple[float, float]
    stains: dict[str, float]
    irregularity: float = 0.05
    chromatin: float = 0.15
    rim: float = 0.0
    vesicular: float = 0.0
    nucleolus: float = 0.0
    intensity_sd: float = 0.1
    follows_fibres: bool = False
    jitter: float = 1.0
    """How far (share of the grid spacing) a nucleus may stray from its cell's corner:
    1 is random placement, less is a more even packing."""


@dataclass(frozen=True)
class Compartment:
    """Extracellular/cytoplasmic material: stain concentrations and how they are textured."""

    stains: dict[str, float]
    texture: str
    texture_amount: float


@dataclass(frozen=True)
class Recipe:
    """A complete staining look: unit OD vectors per stain, glass, compartments, nuclei."""

    name: str
    stains: dict[str, tuple[float, float, float]]
    background_od: tuple[float, float, float]
    compartments: dict[str, Compartment]
    nuclei: tuple[NucleusKind, ...]
    intensity: dict[str, float] = field(default_factory=dict)

    def stain_matrix(self) -> np.ndarray:
        """(n_stains, 3) float32 unit OD vectors, rows in ``stains`` order."""
        m = np.array(list(self.stains.values()), np.float32)
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    def stain_scale(self, name: str) -> float:
        return self.intensity.get(name, 1.0)

    def varied(self, rng: np.random.Generator, amount: float) -> Recipe:
        """This recipe with per-slide stain vectors and intensities, as labs and scanners differ.

        ``amount`` 0 returns the recipe unchanged; 1 tilts each stain vector by about
        10° and scales its intensity by about ±25 % (one standard deviation; draws are
        clipped at two).
        """
        if amount <= 0:
            return self
        draws = np.clip(rng.standard_normal((len(self.stains), 4)), -2, 2)
        stains, intensity = {}, {}
        for (name, vec), d in zip(self.stains.items(), draws, strict=True):
            v = np.asarray(vec, np.float64) / np.linalg.norm(vec)
            v = np.clip(v + 0.15 * amount * d[:3], 0.02, None)
            stains[name] = tuple(float(c) for c in v / np.linalg.norm(v))
            intensity[name] = float(self.stain_scale(name) * np.exp(0.25 * amount * d[3]))
        return replace(self, stains=stains, intensity=intensity)


H_AND_E = Recipe(
    name="he",
    # Macenko's reference H&E vectors (also torchstain's default target), OD space, RGB order.
    stains={"hematoxylin": (0.5626, 0.7201, 0.4062), "eosin": (0.2159, 0.8012, 0.5581)},
    background_od=(0.035, 0.045, 0.032),
    compartments={
        "stroma": Compartment({"hematoxylin": 0.05, "eosin": 0.62}, texture="fibres", texture_amount=1.0),
        "epithelium": Compartment({"hematoxylin": 0.18, "eosin": 0.45}, texture="mottle", texture_amount=0.15),
    },
    nuclei=(
        NucleusKind("tumor", region="epithelium", spacing_um=11.0, density=0.93, radius_um=4.6,
                    radius_sd=1.1, elongation=(1.0, 1.7), irregularity=0.09, chromatin=0.25, rim=0.45,
                    vesicular=0.2, nucleolus=0.55, intensity_sd=0.2, jitter=0.6,
                    stains={"hematoxylin": 1.5, "eosin": 0.12}),
        NucleusKind("fibroblast", region="stroma", spacing_um=26.0, density=0.55, radius_um=2.4,
                    radius_sd=0.3, elongation=(4.0, 7.0), irregularity=0.03, chromatin=0.12,
                    intensity_sd=0.12, follows_fibres=True, stains={"hematoxylin": 1.45, "eosin": 0.1}),
        NucleusKind("lymphocyte", region="lymphoid", spacing_um=9.0, density=0.9, radius_um=3.1,
                    radius_sd=0.3, elongation=(1.0, 1.25), irregularity=0.03, chromatin=0.12,
                    intensity_sd=0.1, stains={"hematoxylin": 1.85, "eosin": 0.05}),
    ),
)

# IHC: hematoxylin counterstain and DAB, with the standard colour-deconvolution vectors
# (Ruifrok & Johnston, skimage.color.rgb_from_hed) so the scorer's truth is well defined.
# Concentrations are natural-log OD along a unit vector; decadic OD is that / ln 10.
_IHC_STAINS = {"hematoxylin": (0.65, 0.70, 0.29), "dab": (0.27, 0.57, 0.78)}
_IHC_COMPARTMENTS = {
    "stroma": Compartment({"hematoxylin": 0.4, "dab": 0.02}, texture="fibres", texture_amount=0.4),
    "epithelium": Compartment({"hematoxylin": 0.22, "dab": 0.05}, texture="mottle", texture_amount=0.15),
}


def _ihc_nuclear(name: str, tumor_dab: float) -> Recipe:
    """A nuclear-marker IHC look (ER, PgR, Ki-67): tumour nuclei carry ``tumor_dab``, each
    scaled by its own intensity (log-normal, σ 0.3), so a positive slide spans weak to
    strong nuclei; stromal and immune nuclei are negative."""
    counter = {"hematoxylin": 0.75, "dab": 0.0}
    return Recipe(
        name=name, stains=_IHC_STAINS, background_od=(0.035, 0.04, 0.045), compartments=_IHC_COMPARTMENTS,
        nuclei=(
            NucleusKind("tumor", region="epithelium", spacing_um=11.0, density=0.93, radius_um=4.4,
                        radius_sd=0.9, elongation=(1.0, 1.6), irregularity=0.07, chromatin=0.15, rim=0.2,
                        intensity_sd=0.3, jitter=0.6,
                        stains={"hematoxylin": 0.55 if tumor_dab else 0.75, "dab": tumor_dab}),
            NucleusKind("fibroblast", region="stroma", spacing_um=26.0, density=0.55, radius_um=2.4,
                        radius_sd=0.3, elongation=(4.0, 7.0), irregularity=0.03, chromatin=0.12,
                        intensity_sd=0.12, follows_fibres=True, stains=counter),
            NucleusKind("lymphocyte", region="lymphoid", spacing_um=9.0, density=0.9, radius_um=3.1,
                        radius_sd=0.3, elongation=(1.0, 1.25), irregularity=0.03, chromatin=0.12,
                        intensity_sd=0.1, stains={"hematoxylin": 0.95, "dab": 0.0}),
        ),
    )


IHC_NUCLEAR = _ihc_nuclear("ihc-nuclear", tumor_dab=1.1)
"""Nuclear-marker positive: every tumour nucleus DAB-stained (about 1+ to 3+); stroma negative."""
IHC_NUCLEAR_NEGATIVE = _ihc_nuclear("ihc-nuclear-negative", tumor_dab=0.0)
"""Nuclear-marker negative: the same tissue, counterstain only."""

RECIPES: dict[str, Recipe] = {r.name: r for r in (H_AND_E, IHC_NUCLEAR, IHC_NUCLEAR_NEGATIVE)}
"""Looks selectable by ``SynthConfig.recipe``."""
