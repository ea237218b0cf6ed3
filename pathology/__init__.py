"""Whole-slide side of the pipeline: slides, tissue, tiling, stain normalization, bags."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pathology-mil")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
