#!/usr/bin/env bash
# A pathologist's batch: a trained model applied to a folder of new slides in one command.
# Uses the demo's trained run (`pathology demo --small` makes it if missing).
set -euo pipefail
DEMO=${DEMO:-demo_out_small}
[ -f "$DEMO/run/config.json" ] || pathology demo --small --out "$DEMO"
pathology synth new_slides --count 3 --width 6144 --height 4608 --seed 7   # stand-ins for tonight's scans
# tile → embed → predict → heatmap with the settings the model was trained with
pathology run new_slides --model "$DEMO/run" --out scored
column -s, -t < scored/results.csv | cut -c1-150
echo "open scored/report.html"
