#!/usr/bin/env bash
# A Cloud TPU VM or pod slice, from creation to deletion, with gcloud.
#
#   launch/tpu_vm.sh --name NAME --zone ZONE [--accelerator_type v4-8] [--version IMAGE]
#       [--project PROJECT] [--workdir REMOTE_DIR] [--results LOCAL_DIR] [--copy DIR]...
#       [--keep] [--dry-run] -- --config=configs/X.py [...]
#
# Steps: pack this checkout (`git archive HEAD`: commit your changes first); create
# the VM; copy the package and every --copy folder (e.g. the Omniglot zips, then pass
# --config.data.manual_dir=~/FOLDER) to all workers; install `.[tpu]` on all workers
# and print the devices each sees; run `python -m fsl_jax.main --distributed=on
# --workdir=REMOTE_DIR` on all workers at once, streaming their output here and to
# RESULTS/train.log; copy REMOTE_DIR back from worker 0 into RESULTS; delete the VM
# (also after a failure or Ctrl-C) unless --keep. On a pod slice (several workers)
# REMOTE_DIR must be storage every worker shares (e.g. a gcsfuse mount): Orbax writes
# each checkpoint from all workers together. Paths in main's arguments are on the VM,
# relative to ~/fsl_jax (e.g. --config.data.manual_dir=../omniglot after --copy
# omniglot). --dry-run prints every command instead.
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

dry_run=0 keep=0
name="" zone="" project=""
accelerator=v4-8
version="tpu-ubuntu2204-base"
workdir=""
results=""
copies=()
while (($#)); do
  option=$1 value=""
  if [[ $option == --*=* ]]; then
    value=${option#*=} option=${option%%=*}
  elif [[ $option =~ ^--(name|zone|project|accelerator_type|version|workdir|results|copy)$ ]]; then
    value=${2:?"$option needs a value"}
    shift
  fi
  case "$option" in
    --dry-run) dry_run=1 ;;
    --keep) keep=1 ;;
    --name) name=$value ;;
    --zone) zone=$value ;;
    --project) project=$value ;;
    --accelerator_type) accelerator=$value ;;
    --version) version=$value ;;
    --workdir) workdir=$value ;;
    --results) results=$value ;;
    --copy) copies+=("$value") ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (main's arguments go after --)" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [[ -z $name || -z $zone ]]; then
  echo "--name and --zone are required" >&2
  usage >&2
  exit 2
fi
workdir=${workdir:-runs/$name}
results=${results:-results/$name}
repo=$(cd "$(dirname "$0")/.." && pwd)
archive=${TMPDIR:-/tmp}/fsl_jax_$name.tar.gz

tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
[[ -z $project ]] || where+=("--project=$project")
q() { printf '%q ' "$@"; }

# Runs (or, with --dry-run, prints) one command given as words.
run() {
  echo "+ $(q "$@")"
  if ((!dry_run)); then
    "$@"
  fi
}

delete_vm() {
  run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
}

run git -C "$repo" archive --format=tar.gz "--output=$archive" HEAD
run "${tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$accelerator" "--version=$version"
if ((!keep)); then
  trap delete_vm EXIT
fi
run "${tpu[@]}" scp "$archive" "$name:fsl_jax.tar.gz" "${where[@]}" --worker=all
for folder in "${copies[@]}"; do
  run "${tpu[@]}" scp --recurse "$folder" "$name:" "${where[@]}" --worker=all
done
install='set -e; mkdir -p fsl_jax; tar -xzf fsl_jax.tar.gz -C fsl_jax; python3 -m venv venv; '
install+='venv/bin/pip install --quiet --upgrade pip; venv/bin/pip install --quiet -e "./fsl_jax[tpu]"; '
install+='venv/bin/python -c "import jax; print(jax.process_index(), jax.local_devices())"'
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$install"
job="cd fsl_jax && ../venv/bin/python -m fsl_jax.main --distributed=on --workdir=$(q "$workdir")$(q "$@")"
run mkdir -p "$results"
echo "+ $(q "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$job") 2>&1 | tee $(q "$results/train.log")"
if ((!dry_run)); then
  "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$job" 2>&1 | tee "$results/train.log"
fi
# A relative REMOTE_DIR is under fsl_jax/ on the VM, where the job ran.
remote=$workdir
[[ $remote == /* ]] || remote=fsl_jax/$workdir
run "${tpu[@]}" scp --recurse "$name:$remote" "$results/" "${where[@]}" --worker=0
