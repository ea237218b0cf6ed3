#!/usr/bin/env bash
# A biomarker lab: ER / PgR / HER2 status predicted from H&E by a multi-task attention model,
# and IHC slides scored classically (% positive nuclei, H-score, Allred, HER2 0-3+).
set -euo pipefail
IHC_IMAGE="$(cd "$(dirname "$0")/.." && pwd)/tests/data/scikit-image/ihc.png"   # works from any folder
pathology synth-cohort lab_cohort --size small                       # H&E slides + manifest with er, pr, her2
pathology tile lab_cohort/slides --out lab_bags --stain macenko
pathology embed lab_bags                                              # offline default encoder
mil train --manifest lab_cohort/manifest.csv --bags lab_bags --target er,pr,her2 --folds 5 --out lab_run --overwrite
# IHC: a DAB-stained field (real image shipped with the tests) scored for ER and for HER2
pathology ihc "$IHC_IMAGE" --marker er --mpp 0.5 --out lab_ihc_er      # warns: this DAB is membranous
pathology ihc "$IHC_IMAGE" --marker her2 --mpp 0.5 --out lab_ihc_her2
column -s, -t < lab_ihc_her2/scores.csv | cut -c1-150
