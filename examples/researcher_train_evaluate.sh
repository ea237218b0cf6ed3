#!/usr/bin/env bash
# A researcher: cross-validated training on one cohort, then evaluation on an external one.
set -euo pipefail
for cohort in train external; do
  seed=$([ "$cohort" = train ] && echo 1 || echo 2)
  pathology synth-cohort "cohort_$cohort" --size small --seed "$seed"
  pathology tile "cohort_$cohort/slides" --out "bags_$cohort" --stain macenko
  pathology embed "bags_$cohort"
done
mil train --manifest cohort_train/manifest.csv --bags bags_train --target tumor,er --survival os_time,os_event \
          --arch gated-abmil --folds 5 --seed 0 --out run_cv --overwrite
mil predict --model run_cv --bags bags_external --manifest cohort_external/manifest.csv --out external_pred
mil evaluate --predictions external_pred/predictions.csv --manifest cohort_external/manifest.csv \
             --target tumor,er --survival os_time,os_event --out external_eval
ls external_eval    # metrics.json, roc_*.png, km_survival.png
