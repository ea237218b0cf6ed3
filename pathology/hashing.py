"""Content hashes and per-slide seeds, computed one way everywhere.

File hashes identify weights and stain references by content (a renamed file is the same
file); a slide's seed depends only on its id and the run's seed, so a slide gets the same
random sample (stain fit, IHC fit tiles) whatever batch, shard or worker it runs in.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def slide_seed(slide_id: str, seed: int = 0) -> int:
    """A 64-bit seed for ``slide_id`` (stable across processes and Python versions, unlike ``hash``)."""
    text = slide_id if seed == 0 else f"{seed}:{slide_id}"  # seed 0 keeps the seeds bags were made with
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
