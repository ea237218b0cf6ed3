#!/usr/bin/env bash
# A researcher: cross-validated training on one cohort, then evaluation on an external one.
# A quicker run (e.g. in CI): SLIDES=12 FOLDS=3 EPOCHS=5 bash examples/researcher_train_evaluate.sh
set -euo pipefail
SLIDES=${SLIDES:-24}   # slides per synthetic cohort
FOLDS=${FOLDS:-5}      # cross-validation folds
EPOCHS=${EPOCHS:-50}   # maximum epochs per fold (early stopping usually ends sooner)
for cohort in train external; do
  seed=$([ "$cohort" = train ] && echo 1 || echo 2)
  pathology synth-cohort "cohort_$cohort" --size small --slides "$SLIDES" --seed "$seed"
  pathology tile "cohort_$cohort/slides" --out "bags_$cohort" --stain macenko
  pathology embed "bags_$cohort"
done
mil train --manifest cohort_train/manifest.csv --bags bags_train --target tumor,er --survival os_time,os_event \
          --arch gated-abmil --folds "$FOLDS" --epochs "$EPOCHS" --seed 0 --out run_cv --overwrite
mil predict --model run_cv --bags bags_external --manifest cohort_external/manifest.csv --out external_pred
mil evaluate --predictions external_pred/predictions.csv --manifest cohort_external/manifest.csv \
             --target tumor,er --survival os_time,os_event --out external_eval
ls external_eval    # metrics.json, roc_*.png, km_survival.png
