#!/usr/bin/env bash
# Copies this checkout (tf_dsr, models, launch) to every worker and installs it
# there, keeping the TPU build of TensorFlow that the VM image ships.
#   launch/tpu/install.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"

archive="$(mktemp -d)/tf_dsr.tar.gz"
tar -C "$REPO_ROOT" -czf "$archive" --exclude='__pycache__' \
  pyproject.toml README.md tf_dsr models launch

remote_install=$(cat <<'REMOTE'
set -euo pipefail
rm -rf ~/tf_dsr && mkdir -p ~/tf_dsr && tar -xzf ~/tf_dsr.tar.gz -C ~/tf_dsr
cd ~/tf_dsr
tf_version="$(python3 -c 'import tensorflow as tf; print(tf.__version__)')"
python3 -m pip install --no-deps -e .
python3 -m pip install "tf-keras~=${tf_version%.*}.0" \
  'tensorflow-model-optimization>=0.8,<0.9' 'tensorflow-datasets>=4.9,<5' \
  absl-py scikit-learn tensorboard
python3 -m launch.configs > /dev/null
REMOTE
)

tpu_vm scp "$archive" "$TPU_NAME":tf_dsr.tar.gz --worker=all
tpu_vm ssh "$TPU_NAME" --worker=all --command="$remote_install"
