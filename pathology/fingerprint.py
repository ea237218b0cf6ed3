"""Which slide file a bag (or an IHC result) was made from: its fingerprint, and the rule that
decides whether a file on disk is still that slide (docs/reliability.md, "Slide identity").

A fingerprint records the file's size, its modification time and a SHA-256 over samples
spread through the whole file: the first and the last MiB (where TIFF writers put headers and
directories) and :data:`SAMPLES` blocks of 64 KiB evenly spaced between them, about 6 MiB
read whatever the slide's size. With ``--verify-slides`` it also records the SHA-256 of the
whole file.

The rule (:func:`slide_changed`):

- with a full SHA-256 on both sides, the hashes decide (a copy with the same bytes is the same
  slide; one changed byte is not);
- otherwise a different size or different samples mean another file, and, where the file is
  the one the bag was made from (a rerun), a different modification time too: a slide
  rewritten in place is re-tiled even when the change falls between the samples;
- a copy (``pathology embed --slides DIR``, a heatmap's slide) may have another modification
  time (``cp`` without ``-p``, a download): size and samples decide;
- fingerprints written before this rule (``size-head-tail-sha256:``, the size and the first
  and last MiB) are still recognised by their own rule, so older bags stay usable; only
  ``--verify-slides`` re-makes them, once, as they hold no full hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .hashing import file_sha256

SCHEME = "sampled-sha256/2"
LEGACY = "size-head-tail-sha256:"
EDGE = 1 << 20       # bytes hashed at the start and at the end
BLOCK = 1 << 16      # bytes of each sample between them
SAMPLES = 64


@dataclass(frozen=True)
class Fingerprint:
    """A slide file's identity: size, modification time (ns), SHA-256 of the samples, and
    optionally the SHA-256 of the whole file."""

    size: int
    mtime_ns: int
    sampled: str
    sha256: str | None = None

    def encode(self) -> str:
        """The one-line form stored in a bag's ``slide_fingerprint`` attribute."""
        full = f" sha256={self.sha256}" if self.sha256 else ""
        return f"{SCHEME} size={self.size} mtime_ns={self.mtime_ns} samples={self.sampled}{full}"

    @classmethod
    def decode(cls, text: str) -> Fingerprint | None:
        """The fingerprint ``encode`` wrote, or None for any other text."""
        scheme, _, rest = str(text).partition(" ")
        if scheme != SCHEME:
            return None
        fields = dict(item.split("=", 1) for item in rest.split() if "=" in item)
        try:
            return cls(int(fields["size"]), int(fields["mtime_ns"]), fields["samples"], fields.get("sha256"))
        except (KeyError, ValueError):
            return None


def sample_offsets(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the blocks hashed for a file of ``size`` bytes: the whole file
    when it is small, else the edges and :data:`SAMPLES` blocks evenly spaced between them."""
    if size <= 2 * EDGE + SAMPLES * BLOCK:
        return [(0, size)]
    inner = size - 2 * EDGE - BLOCK
    middle = [(EDGE + inner * k // (SAMPLES - 1), BLOCK) for k in range(SAMPLES)]
    return [(0, EDGE), *middle, (size - EDGE, EDGE)]


def measure(path: str | Path, full: bool = False) -> Fingerprint:
    """The fingerprint of the file at ``path`` (with the whole file's SHA-256 when ``full``)."""
    path = Path(path)
    stat = path.stat()
    h = hashlib.sha256(str(stat.st_size).encode())
    with open(path, "rb") as fh:
        for offset, length in sample_offsets(stat.st_size):
            fh.seek(offset)
            h.update(fh.read(length))
    return Fingerprint(stat.st_size, stat.st_mtime_ns, h.hexdigest(), file_sha256(path) if full else None)


def fingerprint(path: str | Path, full: bool = False) -> str:
    """The encoded fingerprint of the slide file at ``path`` (see :class:`Fingerprint`)."""
    return measure(path, full).encode()


def legacy_fingerprint(path: str | Path) -> str:
    """The fingerprint bags stored before :data:`SCHEME`: size plus SHA-256 of the first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(EDGE))
        if size > EDGE:
            fh.seek(max(size - EDGE, EDGE))
            h.update(fh.read(EDGE))
    return f"{LEGACY}{h.hexdigest()}"


def slide_changed(recorded: str | None, path: str | Path, current: str | None = None, *,
                  copy: bool = False) -> str | None:
    """Why the file at ``path`` is not the slide whose fingerprint was ``recorded``, or None
    when it is. ``current`` is the file's fingerprint if already measured (with a full hash
    when the user asked to verify slides); ``copy``: the file may be a copy of the original
    elsewhere, whose modification time says nothing."""
    current_fp = Fingerprint.decode(current) if current else measure(path)
    if current_fp is None:
        raise ValueError(f"not a fingerprint: {current!r}")
    if not recorded:
        return "no slide fingerprint recorded"
    if str(recorded).startswith(LEGACY):
        if current_fp.sha256:
            return "made before full slide hashes: nothing to verify against"
        return None if legacy_fingerprint(path) == recorded else "slide file changed (first or last MiB, or size)"
    old = Fingerprint.decode(recorded)
    if old is None:
        return f"unknown slide fingerprint {str(recorded)[:40]!r}"
    if current_fp.sha256:
        if not old.sha256:
            return "made without a full slide hash: nothing to verify against"
        return None if old.sha256 == current_fp.sha256 else "slide file changed (its SHA-256 differs)"
    if old.size != current_fp.size:
        return f"slide file changed (size {old.size} → {current_fp.size} bytes)"
    if old.sampled != current_fp.sampled:
        return "slide file changed (content differs)"
    if not copy and old.mtime_ns != current_fp.mtime_ns:
        return "slide file modified since (its modification time differs)"
    return None

