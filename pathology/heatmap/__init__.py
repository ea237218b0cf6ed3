"""Attention heatmaps (``pathology heatmap``): per slide and task, an overlay of the
normalized attention on the slide with a colour bar, a top/bottom-k patch montage, the
per-patch scores as CSV and a QuPath GeoJSON. See :func:`heatmap_slide`."""

from .run import HeatmapOptions, heatmap_slide
from .scores import NORMALIZERS, normalize
from .sources import HeatmapError, attention_file, model_attention, read_bag

__all__ = ["NORMALIZERS", "HeatmapError", "HeatmapOptions", "attention_file", "heatmap_slide", "model_attention",
           "normalize", "read_bag"]
