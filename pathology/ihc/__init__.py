"""Classical IHC quantification: colour deconvolution, nuclei, membranes, slide scores.

``pathology ihc SLIDES... --marker er|pr|ki67|her2 --out DIR`` scores each slide tile by
tile at a working resolution near 0.5 µm/px (:mod:`.pipeline`):

- :mod:`.deconvolution`: hematoxylin and DAB optical density (standard or fitted matrix);
- :mod:`.nuclei`: nucleus detection (background subtraction, threshold, watershed);
- :mod:`.membrane`: HER2 membrane completeness and intensity per cell;
- :mod:`.markers`: the marker registry with its default DAB thresholds;
- :mod:`.scores`: positive %, H-score, Allred, the ER/PgR, Ki-67 and HER2 calls;
- :mod:`.maps`, :mod:`.report.qc`: tile heatmaps and the nuclei QC picture.

The scores are a transparent, reproducible aid next to the MIL models, not a diagnosis.
"""

from .markers import MARKERS, IntensityThresholds, Marker
from .pipeline import IHCOptions, score_slide

__all__ = ["MARKERS", "IHCOptions", "IntensityThresholds", "Marker", "score_slide"]
