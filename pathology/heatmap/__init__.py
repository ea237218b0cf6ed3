"""Attention heatmaps (``pathology heatmap``): per slide and task, an overlay of the
normalized attention on the slide with a colour bar, a top/bottom-k patch montage, the
per-patch scores as CSV and a QuPath GeoJSON. See :func:`heatmap_slide`."""

from .run import HeatmapOptions, heatmap_job, heatmap_slide
from .scores import NORMALIZERS, normalize
from .sources import AttentionSource, BagView, HeatmapError, attention_file, check_scores, read_bag

__all__ = ["NORMALIZERS", "AttentionSource", "BagView", "HeatmapError", "HeatmapOptions", "attention_file",
           "check_scores", "heatmap_job", "heatmap_slide", "normalize", "read_bag"]
