"""Whole-slide side of the pipeline: slides, tissue, tiling, stain normalization, bags.

The version is defined here (pyproject.toml reads it), not looked up in the installed
metadata: importlib.metadata costs ~30 ms of every command's start-up.
"""

__version__ = "0.1.0"
