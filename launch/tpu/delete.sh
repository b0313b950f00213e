#!/usr/bin/env bash
# Deletes the Cloud TPU VM (it is billed while it exists).
#   launch/tpu/delete.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"

tpu_vm delete "$TPU_NAME" --quiet
