"""Reference (target) images: the packaged default of each stain kind, a user file, or an array."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import StainReferenceError
from .kinds import StainKind

ReferenceLike = str | Path | np.ndarray | None


@dataclass(frozen=True)
class Reference:
    """A reference image and how to identify it in a bag's ``stain`` attribute."""

    name: str
    sha256: str
    source: str  # "packaged", "file" or "array"
    image: np.ndarray

    def attrs(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256, "source": self.source}


def load_reference(reference: ReferenceLike, kind: StainKind) -> Reference:
    """The reference to fit: ``None`` is the packaged default for ``kind``; raises
    :class:`StainReferenceError` naming the file when it cannot be read."""
    if isinstance(reference, np.ndarray):
        if reference.dtype != np.uint8 or reference.ndim != 3 or reference.shape[2] != 3:
            raise StainReferenceError(f"a reference array must be uint8 RGB (H, W, 3), "
                                      f"got {reference.dtype} {reference.shape}")
        image = np.ascontiguousarray(reference)
        return Reference("array", hashlib.sha256(image.tobytes()).hexdigest(), "array", image)
    if reference is None:
        path, source = resources.files(__package__) / "references" / kind.reference, "packaged"
    else:
        path, source = Path(reference), "file"
    try:
        data = path.read_bytes()
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise StainReferenceError(f"cannot read stain reference image {path}: not an image") from None
    except OSError as exc:
        raise StainReferenceError(f"cannot read stain reference image {path}: "
                                  f"{exc.strerror or exc}") from None
    return Reference(path.name, hashlib.sha256(data).hexdigest(), source, image)
