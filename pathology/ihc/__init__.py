"""Classical IHC quantification: colour deconvolution, nuclei, membranes, slide scores.

``pathology ihc SLIDES... --marker er|pr|ki67|her2 --out DIR`` scores each slide tile by
tile at a working resolution near 0.5 µm/px (:mod:`.pipeline`), on its tissue or inside its
ROI (:mod:`pathology.roi`):

- :mod:`.tissue`: tissue by optical density above the glass; a field of view is scored whole;
- :mod:`.deconvolution`: hematoxylin and DAB optical density (standard or fitted matrix);
- :mod:`.nuclei`: nucleus detection (blobs at nuclear scale, outlined at half height) and
  each nucleus's own DAB (its mean less its surroundings');
- :mod:`.membrane`: HER2 membrane completeness and intensity per cell;
- :mod:`.markers`: the marker registry with its default DAB thresholds;
- :mod:`.scores`, :mod:`.hotspot`: positive %, H-score, Allred, the ER/PgR, Ki-67 (global
  and hotspot) and HER2 calls;
- :mod:`.maps`, :mod:`.report`: tile heatmaps and the QC picture, with the ROI and hotspot.

The scores are a transparent, reproducible aid next to the MIL models, not a diagnosis.
"""

from .markers import MARKERS, IntensityThresholds, Marker
from .pipeline import IHCOptions, score_slide

__all__ = ["MARKERS", "IHCOptions", "IntensityThresholds", "Marker", "score_slide"]
