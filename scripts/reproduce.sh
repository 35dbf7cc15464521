#!/usr/bin/env bash
# Run the reproduction set end to end, then write docs/results.md from the MLflow runs.
#
#   scripts/reproduce.sh                          # 9,583-image subset, CPU, offline lite0 backbone
#   scripts/reproduce.sh reproductions table      # only some stages
#   DATA=catalogue scripts/reproduce.sh reproductions   # the whole catalogue (38,800 thumbnails; out-of-time and
#        # cross-resolution sets scored too); RECIPES="linear_probe vgg16_7heads" picks recipes
#   DATA=kaggle EXTRA="data.root=/data/fashion-dataset" TRAINER=gpu BACKBONE= BEST=best_gpu scripts/reproduce.sh
#        # full dataset on a GPU, each recipe with its own (hub) backbone: BACKBONE empty
#
# Stages: report reproductions best ablation table (default: all, in that order).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DATA=${DATA:-subset}
TRAINER=${TRAINER:-cpu}
BACKBONE=${BACKBONE-efficientnet_lite0}   # set empty to use each recipe's own backbone (needs the hub)
if [ "$DATA" = subset ]; then BEST=${BEST:-best_cpu_subset}; else BEST=${BEST:-best_cpu}; fi   # best_cpu is the catalogue recipe
EXTRA=${EXTRA:-}
STAGES=${*:-report reproductions best ablation table}
# shellcheck disable=SC2206
RECIPES=(${RECIPES:-linear_probe convnext_tiny_4heads efficientnetb0_6heads vgg16_7heads resnet18_4heads})  # cheapest first

export NO_ALBUMENTATIONS_UPDATE=1
common=(data="$DATA" trainer="$TRAINER" callbacks.progress_bar=null trainer.enable_progress_bar=false)
# shellcheck disable=SC2206
extra=($EXTRA)

for stage in $STAGES; do
  case "$stage" in
    report)
      "$PY" -m fashion.data_report report data="$DATA" "${extra[@]}" ;;
    reproductions)
      for recipe in "${RECIPES[@]}"; do
        echo "=== $recipe ${BACKBONE:+(backbone=$BACKBONE)}"
        "$PY" -m fashion.train experiment="$recipe" ${BACKBONE:+backbone="$BACKBONE"} "${common[@]}" "${extra[@]}"
      done ;;
    best)
      "$PY" -m fashion.train experiment="$BEST" "${common[@]}" "${extra[@]}" ;;
    ablation)
      "$PY" -m fashion.train -m experiment=loss_weighting_ablation loss_weighting=fixed,uncertainty,dwa seed=1,2 \
        "${common[@]}" "${extra[@]}" ;;
    table)
      "$PY" scripts/results_table.py ;;
    *)
      echo "unknown stage '$stage' (report reproductions best ablation table)" >&2; exit 2 ;;
  esac
done
