# Settings shared by the Cloud TPU scripts (sourced, not run). Override any of
# them in the environment, for example: TPU_NAME=my-tpu ZONE=us-central1-a.
#
# TF's TPUStrategy is single-client: one Python process on worker 0 drives all
# hosts of a slice. A one-host TPU (v2-8, v3-8, v4-8, ...) is reached as
# --tpu=local; a multi-host pod slice (v3-32, ...) as --tpu=$TPU_NAME with
# TPU_LOAD_LIBRARY=0, and then DATA_DIR and MODEL_ROOT must be gs:// paths
# that every host can read.

TPU_NAME="${TPU_NAME:-dsr-tpu}"
ZONE="${ZONE:-europe-west4-a}"
PROJECT="${PROJECT:-}"                      # empty: gcloud's default project
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v3-8}"
# TPU VM image with TensorFlow; use tpu-vm-tf-2.18.0-pod-pjrt for pod slices.
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-vm-tf-2.18.0-pjrt}"
DATA_DIR="${DATA_DIR:-}"                    # tfds data_dir; empty: tfds' default
MODEL_ROOT="${MODEL_ROOT:-dsr_runs}"        # runs go to $MODEL_ROOT/<config>;
                                            # relative paths are under ~ on worker 0

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Hosts in the slice: the number after the dash counts TensorCores (v2-v4) or
# chips (v5e, v6e), 8 per host.
NUM_HOSTS=$(( ${ACCELERATOR_TYPE##*-} / 8 ))
(( NUM_HOSTS >= 1 )) || NUM_HOSTS=1

# gcloud compute tpus tpu-vm SUBCOMMAND ... with the zone and project set.
tpu_vm() {
  local subcommand="$1"
  shift
  gcloud compute tpus tpu-vm "$subcommand" "$@" --zone="$ZONE" \
    ${PROJECT:+--project="$PROJECT"}
}

# Fails (status 2) unless $1 names a config of launch/configs.py (checked
# against launch/config_names.txt, without importing TensorFlow).
check_config() {
  (cd "$REPO_ROOT" && python3 -m launch.precheck "$1")
}
