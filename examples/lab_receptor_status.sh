#!/usr/bin/env bash
# A biomarker lab: ER / PgR / HER2 status predicted from H&E by a multi-task attention model,
# and IHC slides scored classically (% positive nuclei, H-score, Allred, HER2 0-3+).
set -euo pipefail
pathology synth-cohort lab_cohort --size small                       # H&E slides + manifest with er, pr, her2
pathology tile lab_cohort/slides --out lab_bags --stain macenko
pathology embed lab_bags                                              # offline default encoder
mil train --manifest lab_cohort/manifest.csv --bags lab_bags --target er,pr,her2 --folds 5 --out lab_run
# IHC: a DAB-stained field (real image shipped with the tests) scored for ER and for HER2
pathology ihc tests/data/scikit-image/ihc.png --marker er --mpp 0.5 --out lab_ihc_er
pathology ihc tests/data/scikit-image/ihc.png --marker her2 --mpp 0.5 --out lab_ihc_her2
column -s, -t < lab_ihc_her2/scores.csv | cut -c1-150
