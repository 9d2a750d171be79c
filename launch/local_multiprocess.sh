#!/usr/bin/env bash
# N processes on 127.0.0.1, each with D forced CPU devices, joined by
# jax.distributed (gloo collectives): the multi-host code path on one machine.
#
#   launch/local_multiprocess.sh [--dry-run] [--num_processes N] [--devices_per_process D]
#       [--port PORT] [--log_dir DIR] -- --config=configs/X.py:quick --workdir=DIR [...]
#
# Everything after "--" goes to `python -m fsl_jax.main`, on every process. Process
# 0's output goes to this terminal; process i's to LOG_DIR/process_i.log. Run it
# from the repository root. The run fails if any process fails; then the others
# are stopped.
set -euo pipefail
# shellcheck source=launch/processes.sh
source "$(dirname "${BASH_SOURCE[0]}")/processes.sh"

dry_run=0
num_processes=2
devices=2
port=${FSL_JAX_PORT:-29500}
log_dir=""
python=${PYTHON:-python}
while (($#)); do
  option=$1 value=""
  if [[ $option == --*=* ]]; then
    value=${option#*=} option=${option%%=*}
  elif [[ $option == --num_processes || $option == --devices_per_process || $option == --port || $option == --log_dir ]]; then
    value=${2:?"$option needs a value"}
    shift
  fi
  case "$option" in
    --dry-run) dry_run=1 ;;
    --num_processes) num_processes=$value ;;
    --devices_per_process) devices=$value ;;
    --port) port=$value ;;
    --log_dir) log_dir=$value ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (main's arguments go after --)" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ -n $log_dir ]] || log_dir=${TMPDIR:-/tmp}/fsl_jax_local_$port

commands=()
for ((i = 0; i < num_processes; i++)); do
  cmd=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
    "$python" -m fsl_jax.main "$@" "--coordinator_address=127.0.0.1:$port"
    "--num_processes=$num_processes" "--process_id=$i")
  commands+=("$(printf '%q ' "${cmd[@]}")")
done

if ((dry_run)); then
  print_processes "$log_dir" "${commands[@]}"
  exit 0
fi
run_processes "$log_dir" "${commands[@]}"
