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

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

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
  echo "mkdir -p $(printf '%q' "$log_dir")"
  for ((i = 0; i < num_processes; i++)); do
    if ((i == 0)); then
      echo "${commands[i]}&"
    else
      echo "${commands[i]}> $(printf '%q' "$log_dir/process_$i.log") 2>&1 &"
    fi
  done
  echo "wait"
  exit 0
fi

mkdir -p "$log_dir"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM
for ((i = 0; i < num_processes; i++)); do
  if ((i == 0)); then
    eval "${commands[i]}" &
  else
    eval "${commands[i]}" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done
status=0
for ((n = 0; n < num_processes; n++)); do
  if ! wait -n; then
    if ((status == 0)); then
      echo "a process failed; stopping the others (logs: process 0 above, $log_dir)" >&2
    fi
    status=1
    stop_all
  fi
done
exit "$status"
