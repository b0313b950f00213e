#!/usr/bin/env bash
# Copies a run (checkpoints, logs, saved_model, results.json) and its console
# log back from the TPU VM into DEST/<config> (default DEST: runs).
#   launch/tpu/fetch.sh resnet50_imagenet_dsr_s0.9 [DEST]
set -euo pipefail
source "$(dirname "$0")/common.sh"

config="${1:?usage: fetch.sh CONFIG [DEST]}"
dest="${2:-runs}"
check_config "$config"
mkdir -p "$dest"

if [[ "$MODEL_ROOT" == gs://* ]]; then
  gcloud storage cp -r "$MODEL_ROOT/$config" "$dest/"
else
  tpu_vm scp --recurse "$TPU_NAME:$MODEL_ROOT/$config" "$dest/" --worker=0
fi
tpu_vm scp "$TPU_NAME:dsr_logs/$config.log" "$dest/$config/" --worker=0
echo "Copied to $dest/$config (results.json, saved_model/, logs/)."
