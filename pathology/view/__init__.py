"""``pathology view``: a run, demo or IHC output folder as a small local web application.

The slide list with calls and scores; each slide zoomable at full resolution (DeepZoom tiles
in OpenSlide's deepzoom-server layout, drawn by OpenSeadragon shipped in ``static/``) under
its attention heatmaps, highest- and lowest-attention patches, tissue outline and IHC
overlays, all in level-0 coordinates. Read-only; serves only the folder and the slides its
records name. See :mod:`.server`.
"""

from .server import ViewServer

__all__ = ["ViewServer"]
