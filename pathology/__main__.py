"""The ``pathology`` console script (and ``python -m pathology``): start-up with the garbage
collector paused.

Start-up creates ~10^5 objects (modules, classes, functions) that live until exit; the
collector's passes over them while they are made cost ~20 ms of every command, and its passes
at exit ~40 ms more. This module sits outside :mod:`pathology.cli` (whose import is the heavy
part) and imports nothing itself: it pauses the collector before the command line is imported,
and :meth:`pathology.cli.lazy.LazyGroup.load` freezes what start-up made (the collector then
never looks at it again) and resumes collecting once the command's code is loaded.
"""

from __future__ import annotations

import gc


def main() -> None:
    """Run the ``pathology`` command line."""
    gc.disable()
    from .cli import app

    app()


if __name__ == "__main__":
    main()
