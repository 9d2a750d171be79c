#!/usr/bin/env bash
# One host with several GPUs.
#
#   launch/gpu_multi.sh [--dry-run] [--gpus N] [--process_per_gpu] [--port PORT]
#       [--log_dir DIR] -- --config=configs/X.py --workdir=DIR [...]
#
# By default one process drives GPUs 0..N-1 (CUDA_VISIBLE_DEVICES): the mesh has N
# devices and each takes meta_batch_size / N episodes of every meta-batch. With
# --process_per_gpu, N processes (one GPU each) join through jax.distributed on
# 127.0.0.1:PORT instead, as on several hosts; process 0 prints here, process i
# logs to LOG_DIR/process_i.log. N defaults to every GPU nvidia-smi lists.
# Everything after "--" goes to `python -m fsl_jax.main`. Run from the repository root.
set -euo pipefail
# shellcheck source=launch/processes.sh
source "$(dirname "${BASH_SOURCE[0]}")/processes.sh"

dry_run=0
gpus=""
per_gpu=0
port=${FSL_JAX_PORT:-29500}
log_dir=""
python=${PYTHON:-python}
while (($#)); do
  option=$1 value=""
  if [[ $option == --*=* ]]; then
    value=${option#*=} option=${option%%=*}
  elif [[ $option == --gpus || $option == --port || $option == --log_dir ]]; then
    value=${2:?"$option needs a value"}
    shift
  fi
  case "$option" in
    --dry-run) dry_run=1 ;;
    --gpus) gpus=$value ;;
    --process_per_gpu) per_gpu=1 ;;
    --port) port=$value ;;
    --log_dir) log_dir=$value ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (main's arguments go after --)" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [[ -z $gpus ]]; then
  gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
  if ((gpus == 0)); then
    echo "nvidia-smi lists no GPU; pass --gpus N" >&2
    exit 2
  fi
fi
[[ -n $log_dir ]] || log_dir=${TMPDIR:-/tmp}/fsl_jax_gpu_$port

check=(env "CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus - 1)))" "$python" -c
  "import jax; print(jax.default_backend(), jax.devices())")
commands=("$(printf '%q ' "${check[@]}")")
if ((per_gpu)); then
  for ((i = 0; i < gpus; i++)); do
    cmd=(env "CUDA_VISIBLE_DEVICES=$i" "$python" -m fsl_jax.main "$@"
      "--coordinator_address=127.0.0.1:$port" "--num_processes=$gpus" "--process_id=$i")
    commands+=("$(printf '%q ' "${cmd[@]}")")
  done
else
  cmd=(env "CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus - 1)))" "$python" -m fsl_jax.main "$@")
  commands+=("$(printf '%q ' "${cmd[@]}")")
fi

if ((dry_run)); then
  echo "${commands[0]}"
  if ((per_gpu)); then
    print_processes "$log_dir" "${commands[@]:1}"
  else
    echo "${commands[1]}"
  fi
  exit 0
fi

eval "${commands[0]}"
if ((!per_gpu)); then
  eval "${commands[1]}"
  exit
fi
run_processes "$log_dir" "${commands[@]:1}"
