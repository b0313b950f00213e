#!/usr/bin/env bash
# Launches a named config on the TPU, in the background on worker 0 (see
# common.sh for why one process), logging to ~/dsr_logs/<config>.log there.
#   launch/tpu/train.sh resnet50_imagenet_dsr_s0.9
#   launch/tpu/train.sh wrn28_2_cifar10_dsr_s0.9 --override epochs=10
#   launch/tpu/train.sh resnet50_imagenet_dsr_s0.9 --resume
# Extra arguments go to `python -m launch.train`.
set -euo pipefail
source "$(dirname "$0")/common.sh"

config="${1:?usage: train.sh CONFIG [launch.train flags ...]}"
shift
check_config "$config"

if (( NUM_HOSTS == 1 )); then
  tpu=local
  environment=""
else
  tpu="$TPU_NAME"
  environment="TPU_NAME=$TPU_NAME TPU_LOAD_LIBRARY=0"
fi
args=(--config="$config" --strategy=tpu --tpu="$tpu"
      --model_dir="$MODEL_ROOT/$config" "$@")
if [[ -n "$DATA_DIR" ]]; then
  args+=(--data_dir="$DATA_DIR")
fi
log="dsr_logs/$config.log"
command="mkdir -p ~/dsr_logs && nohup env $environment"
command+=" python3 -m launch.train $(printf '%q ' "${args[@]}")"
command+="> ~/$log 2>&1 < /dev/null &"

tpu_vm ssh "$TPU_NAME" --worker=0 --command="$command"
echo "Started $config on $TPU_NAME. Follow it with:"
echo "  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0" \
  "--command='tail -f ~/$log'"
