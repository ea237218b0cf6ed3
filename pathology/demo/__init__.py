"""``pathology demo``: the whole pipeline, training included, on a synthetic cohort it generates."""

from .pipeline import DemoError, DemoOptions, DemoResult, run_demo

__all__ = ["DemoError", "DemoOptions", "DemoResult", "run_demo"]
