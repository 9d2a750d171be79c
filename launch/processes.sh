# shellcheck shell=bash
# Functions shared by the launchers that start several `python -m fsl_jax.main`
# processes on this machine (gpu_multi.sh, local_multiprocess.sh). Source it;
# it defines functions and runs nothing.

# Prints the calling script's usage: the comment block after its first line.
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

# print_processes LOG_DIR COMMAND...
# Prints what run_processes would run, one line each (for --dry-run).
print_processes() {
  local log_dir=$1 i=0 command
  shift
  echo "mkdir -p $(printf '%q' "$log_dir")"
  for command in "$@"; do
    if ((i == 0)); then
      echo "${command}&"
    else
      echo "${command}> $(printf '%q' "$log_dir/process_$i.log") 2>&1 &"
    fi
    i=$((i + 1))
  done
  echo "wait"
}

# run_processes LOG_DIR COMMAND...
# Starts every COMMAND (each one shell-quoted simple command) at once, each as its
# own process (exec), so that stopping it stops the program and not just a subshell.
# Process 0 writes to this terminal, process i to LOG_DIR/process_i.log. If one
# fails, the others get SIGTERM. Returns 0 when all succeed, else 1; Ctrl-C stops
# them all.
run_processes() {
  local log_dir=$1 i pid status=0
  shift
  mkdir -p "$log_dir"
  _launch_pids=()
  trap '_stop_processes; exit 130' INT TERM
  for ((i = 1; i <= $#; i++)); do
    if ((i == 1)); then
      eval "exec ${!i}" &
    else
      eval "exec ${!i}" >"$log_dir/process_$((i - 1)).log" 2>&1 &
    fi
    _launch_pids+=("$!")
  done
  # Polled once a second: `wait PID` reports a process that has already ended,
  # where `wait -n` can miss one that ended before it was called.
  local running=("${_launch_pids[@]}") still
  while ((${#running[@]})); do
    still=()
    for pid in "${running[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then
        still+=("$pid")
      elif ! wait "$pid"; then
        if ((status == 0)); then
          echo "a process failed; stopping the others (logs: process 0 above, $log_dir)" >&2
        fi
        status=1
        _stop_processes
      fi
    done
    running=("${still[@]}")
    if ((${#running[@]})); then sleep 1; fi
  done
  return "$status"
}

_stop_processes() {
  local pid
  for pid in "${_launch_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
