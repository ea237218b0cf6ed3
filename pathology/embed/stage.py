"""Embedding as a batch stage: a worker loads the encoder once (its state) and embeds bag after
bag; each bag is claimed while its features are written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..encoders import Encoder, load_encoder
from ..inputs import SlideInput
from ..jobs import Outcome, Stage
from .run import EmbedOptions, embed_bag


@dataclass(frozen=True)
class EncoderChoice:
    """The encoder a worker loads: registry name, weights file, device, precision, and the CPU
    threads its forward pass may use."""

    name: str
    weights: Path | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    random_weights: bool = False
    threads: int | None = None

    def load(self) -> Encoder:
        if self.threads:
            torch.set_num_threads(self.threads)
        return load_encoder(self.name, self.weights, random_weights=self.random_weights, device=self.device,
                            precision=self.precision, compile=self.compile)


def bag_of(bags_dir: Path | None, slide: SlideInput) -> Path:
    """The bag to embed: the input itself (``pathology embed BAGS``), or ``<bags_dir>/<slide_id>.h5``
    (a slide tiled earlier in the same pipeline)."""
    return slide.path if bags_dir is None else Path(bags_dir) / f"{slide.slide_id}.h5"


def _embed(slide: SlideInput, advance: Callable[[int], None], encoder: Encoder, *, options: EmbedOptions,
           bags_dir: Path | None) -> Outcome:
    return embed_bag(bag_of(bags_dir, slide), encoder, options, advance)


def embed_stage(choice: EncoderChoice, options: EmbedOptions, bags_dir: Path | None = None) -> Stage:
    """Embed each bag (or each slide's bag in ``bags_dir``) with the encoder ``choice`` loads."""
    return Stage("embed", partial(_embed, options=options, bags_dir=bags_dir), setup=choice.load,
                 claim=partial(bag_of, bags_dir), cpus=choice.threads or 1, accelerated=True)
