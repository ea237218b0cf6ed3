"""What the registry knows about an encoder: how to build it, feed it, and find its weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class WeightSource:
    """Where an encoder's published weights live and on what terms.

    ``hf_repo``/``hf_file``: a Hugging Face Hub file (looked up in the local HF cache,
    downloaded only by ``pathology encoders fetch``); ``url``: a plain download kept in the
    torch hub cache (``$TORCH_HOME/hub/checkpoints/<file name>``); ``file``: a local file (an
    encoder folder's weights, :mod:`pathology.encoders.local`). ``None`` for all means the
    encoder has no weights to load (its parameters are fixed by construction).
    """

    hf_repo: str | None = None
    hf_file: str | None = None
    url: str | None = None
    file: str | None = None
    licence: str = ""
    gated: bool = False        # the publisher must approve each user (accept terms on the Hub, log in)
    homepage: str = ""

    @property
    def needed(self) -> bool:
        return bool(self.hf_repo or self.url or self.file)

    @property
    def file_name(self) -> str:
        """The file name users have (what ``--weights`` would usually point at)."""
        if self.hf_file:
            return self.hf_file
        if self.file:
            return self.file.rsplit("/", 1)[-1]
        return self.url.rsplit("/", 1)[-1] if self.url else ""


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry.

    ``build()`` returns the architecture with random (or, for fixed encoders, final)
    parameters; ``adapt`` turns a checkpoint as its publisher distributes it into this
    architecture's state dict (renaming keys, dropping what the architecture removes on
    purpose); anything else that does not fit is an error, never a silent partial load.
    ``input_size`` None means patches are fed at the bag's own size (no resize).
    """

    name: str
    dim: int
    input_size: int | None
    build: Callable[[], nn.Module]
    weights: WeightSource
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: str = "bf16"          # autocast dtype on a GPU: "bf16", "fp16" or "fp32"
    channels_last: bool = False      # CNNs run faster in NHWC memory layout
    adapt: Callable[[StateDict, nn.Module], StateDict] | None = None
    description: str = ""
    architecture: str = ""
    aliases: tuple[str, ...] = field(default=())
