#!/usr/bin/env bash
# A biomarker lab: ER / PgR / HER2 status predicted from H&E by a multi-task attention model,
# and IHC slides scored classically (% positive nuclei, H-score, Allred, HER2 0-3+).
# A quicker run (e.g. in CI): SLIDES=12 FOLDS=3 EPOCHS=5 bash examples/lab_receptor_status.sh
set -euo pipefail
SLIDES=${SLIDES:-24}   # slides in the synthetic cohort
FOLDS=${FOLDS:-5}      # cross-validation folds
EPOCHS=${EPOCHS:-50}   # maximum epochs per fold (early stopping usually ends sooner)
IHC_IMAGE="$(cd "$(dirname "$0")/.." && pwd)/tests/data/scikit-image/ihc.png"   # works from any folder
pathology synth-cohort lab_cohort --size small --slides "$SLIDES"     # H&E slides + manifest with er, pr, her2
pathology tile lab_cohort/slides --out lab_bags --stain macenko
pathology embed lab_bags                                              # offline default encoder
mil train --manifest lab_cohort/manifest.csv --bags lab_bags --target er,pr,her2 --folds "$FOLDS" \
          --epochs "$EPOCHS" --out lab_run --overwrite
# IHC: a DAB-stained field (real image shipped with the tests) scored for ER and for HER2
pathology ihc "$IHC_IMAGE" --marker er --mpp 0.5 --out lab_ihc_er      # warns: this DAB is membranous
pathology ihc "$IHC_IMAGE" --marker her2 --mpp 0.5 --out lab_ihc_her2
column -s, -t < lab_ihc_her2/scores.csv | cut -c1-150
