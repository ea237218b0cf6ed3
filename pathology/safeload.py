"""Reading PyTorch files a user did not write: tensors only, never code (docs/architecture.md, "Files").

``torch.load(weights_only=True)`` refuses a pickle that would import or call anything but
tensors and containers. Its refusal advises re-running with ``weights_only=False``, which
would run the file's code: that advice is never passed on. Its warning about an unusual
pickle protocol is not shown either (the load is refused or succeeds safely either way).
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch


class RefusedPickleError(Exception):
    """The file holds pickled objects other than tensors; ``str()`` says what, in one line."""


def _what(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    found = re.search(r"(unsupported GLOBAL [\w.]+|Unsupported operand \d+|Unsupported class [\w.]+)", text)
    return found.group(1) if found else type(exc).__name__


def load_tensors(path: str | Path) -> Any:
    """The tensors (in their dicts, lists or tuples) of a PyTorch file, on the CPU; raises
    :class:`RefusedPickleError` for a file holding anything else, and the loader's own error for a
    file that is not a PyTorch file at all."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise RefusedPickleError(f"it holds pickled objects other than tensors ({_what(exc)}); nothing in it was "
                                "run") from None
