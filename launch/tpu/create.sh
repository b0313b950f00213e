#!/usr/bin/env bash
# Creates the Cloud TPU VM (settings in common.sh).
#   launch/tpu/create.sh
#   ACCELERATOR_TYPE=v3-32 RUNTIME_VERSION=tpu-vm-tf-2.18.0-pod-pjrt launch/tpu/create.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"

tpu_vm create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
  --version="$RUNTIME_VERSION"
