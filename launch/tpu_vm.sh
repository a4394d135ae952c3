#!/usr/bin/env bash
# Cloud TPU VMs (one host or a pod slice) for mae-jax, through gcloud.
#
#   launch/tpu_vm.sh SUBCOMMAND [OPTIONS] [-- ARGS...]
#
# Subcommands:
#   create   create the TPU VM, or a queued resource with --queued (waits until ACTIVE)
#   setup    copy this checkout (or clone --repo) to every worker, then
#            pip install -e '.[tpu]' into ~/mae_jax_venv there
#   run      run `mae-jax ARGS` on all workers at once (--worker=all); each worker
#            appends its output to ~/mae_jax_logs/mae_jax.log on its own disk
#   ssh      a shell on --worker (default 0), or run `ARGS` there
#   logs     the last --lines of the log of every worker (or of --worker)
#   delete   delete the TPU VM (with --queued: the queued resource and its VM)
#   retry    run until the run succeeds: whenever the VM was preempted, recreate
#            it, set it up and run again. The run resumes from the checkpoints in
#            its --workdir, so give a gs:// workdir.
#
# Options (defaults from the environment variables in brackets):
#   --name=NAME             TPU name [TPU_NAME, mae-jax]
#   --zone=ZONE             [ZONE, us-central2-b]
#   --project=PROJECT       [PROJECT, gcloud's configured project]
#   --accelerator=TYPE      v4-8, v4-64, v5litepod-16, ... [ACCELERATOR_TYPE, v4-8]
#   --version=RUNTIME       TPU software version [RUNTIME_VERSION, tpu-ubuntu2204-base]
#   --spot | --preemptible  spot or preemptible capacity (default: on demand)
#   --queued                create through a queued resource
#   --repo=URL              setup clones URL (--branch=BRANCH) instead of copying
#   --python=PYTHON         interpreter for the venv on the workers [python3.11]
#   --worker=N|all          worker for ssh/logs [ssh: 0, logs: all]
#   --lines=N               lines shown by logs [100]
#   --max_retries=N         runs retry attempts [20]
#   --dry-run               print the commands, run nothing
#
# Every command is printed (prefixed with "+") before it runs.
#
#   launch/tpu_vm.sh create --name=mae-l16 --accelerator=v4-64 --spot
#   launch/tpu_vm.sh setup --name=mae-l16 --accelerator=v4-64
#   launch/tpu_vm.sh run --name=mae-l16 -- pretrain \
#       --config=configs/pretrain_imagenet.py:variant=L/16 --workdir=gs://BUCKET/mae_l16
set -euo pipefail

usage() {
  sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}
die() {
  echo "error: $*" >&2
  exit 2
}

name="${TPU_NAME:-mae-jax}"
zone="${ZONE:-us-central2-b}"
project="${PROJECT:-}"
accelerator="${ACCELERATOR_TYPE:-v4-8}"
version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
capacity=""
queued=0
repo=""
branch=""
python="python3.11"
worker=""
lines=100
max_retries=20
retry_wait_s="${RETRY_WAIT_S:-60}"
dry_run=0

[[ $# -ge 1 ]] || usage
subcommand="$1"
shift
case "$subcommand" in
  create|setup|run|ssh|logs|delete|retry) ;;
  -h|--help|help) usage 0 ;;
  *) die "unknown subcommand '$subcommand'; one of create, setup, run, ssh, logs, delete, retry" ;;
esac

args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator=*|--accelerator-type=*) accelerator="${1#*=}" ;;
    --version=*|--runtime-version=*) version="${1#*=}" ;;
    --spot) capacity="--spot" ;;
    --preemptible) capacity="--preemptible" ;;
    --queued) queued=1 ;;
    --repo=*) repo="${1#*=}" ;;
    --branch=*) branch="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --worker=*) worker="${1#*=}" ;;
    --lines=*) lines="${1#*=}" ;;
    --max_retries=*) max_retries="${1#*=}" ;;
    --dry-run|--dry_run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; args=("$@"); break ;;
    *) die "unknown option '$1' (mae-jax arguments go after --)" ;;
  esac
  shift
done
if [[ "$queued" == 1 && "$capacity" == "--preemptible" ]]; then
  die "queued resources take --spot, not --preemptible"
fi

# --------------------------------------------------------------------- helpers

# Shell-quotes each argument only where needed, so printed commands can be pasted.
quote() {
  local out=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=("$arg")
    elif [[ "$arg" =~ ^(--[A-Za-z0-9_-]+=)(.*)$ ]]; then
      out+=("${BASH_REMATCH[1]}'${BASH_REMATCH[2]//\'/\'\\\'\'}'")
    else
      out+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# Prints a command, then runs it unless --dry-run.
run_cmd() {
  echo "+ $(quote "$@")"
  if [[ "$dry_run" == 0 ]]; then
    "$@"
  fi
}

location=("--zone=${zone}")
if [[ -n "$project" ]]; then
  location+=("--project=${project}")
fi
tpu=(gcloud compute tpus tpu-vm)
queue=(gcloud compute tpus queued-resources)
# Paths on the workers, expanded by their shell.
# shellcheck disable=SC2088
venv='~/mae_jax_venv'
# shellcheck disable=SC2088
src='~/mae_jax'
# shellcheck disable=SC2088
log='~/mae_jax_logs/mae_jax.log'

# READY, MISSING, PREEMPTED (or another terminal state) or a transitional state.
state() {
  local raw
  if [[ "$queued" == 1 ]]; then
    echo "+ $(quote "${queue[@]}" describe "$name" "${location[@]}" --format='value(state.state)')" >&2
    raw="$("${queue[@]}" describe "$name" "${location[@]}" --format='value(state.state)' 2>/dev/null)" || raw=MISSING
    case "$raw" in
      ACTIVE) echo READY ;;
      SUSPENDED|SUSPENDING|FAILED) echo PREEMPTED ;;
      *) echo "${raw:-MISSING}" ;;
    esac
  else
    echo "+ $(quote "${tpu[@]}" describe "$name" "${location[@]}" --format='value(state)')" >&2
    raw="$("${tpu[@]}" describe "$name" "${location[@]}" --format='value(state)' 2>/dev/null)" || raw=MISSING
    case "$raw" in
      TERMINATED|STOPPED|STOPPING) echo PREEMPTED ;;
      *) echo "${raw:-MISSING}" ;;
    esac
  fi
}

wait_until_ready() {
  local s
  [[ "$dry_run" == 1 ]] && return 0
  while true; do
    s="$(state)"
    case "$s" in
      READY) return 0 ;;
      PREEMPTED|MISSING) die "TPU ${name} is ${s} while waiting for it" ;;
    esac
    echo "# ${name}: ${s}; waiting" >&2
    sleep 30
  done
}

# --------------------------------------------------------------------- subcommands

do_create() {
  if [[ "$queued" == 1 ]]; then
    run_cmd "${queue[@]}" create "$name" "${location[@]}" --node-id="$name" \
      --accelerator-type="$accelerator" --runtime-version="$version" ${capacity:+"$capacity"}
    wait_until_ready
  else
    run_cmd "${tpu[@]}" create "$name" "${location[@]}" --accelerator-type="$accelerator" \
      --version="$version" ${capacity:+"$capacity"}
  fi
}

do_setup() {
  local install fetch
  install="${python} -m venv --help >/dev/null 2>&1 || (sudo apt-get -qq update && sudo DEBIAN_FRONTEND=noninteractive apt-get -qq install -y ${python} ${python}-venv); ${python} -m venv ${venv}; ${venv}/bin/pip install -q --upgrade pip; ${venv}/bin/pip install -q -e \".[tpu]\""
  if [[ -n "$repo" ]]; then
    fetch="if [ -d ${src}/.git ]; then git -C ${src} fetch -q --depth=1 origin ${branch:-HEAD} && git -C ${src} checkout -q -f FETCH_HEAD; else git clone -q --depth=1 ${branch:+--branch=${branch} }${repo} ${src}; fi"
  else
    local tarball="${TMPDIR:-/tmp}/mae_jax_src.tar.gz"
    echo "+ $(quote tar -czf "$tarball" --exclude=.git --exclude=.venv --exclude=workdirs --exclude=__pycache__ .)"
    if [[ "$dry_run" == 0 ]]; then
      (cd "$(dirname "$0")/.." && tar -czf "$tarball" --exclude=.git --exclude=.venv \
        --exclude=workdirs --exclude=__pycache__ .)
    fi
    run_cmd "${tpu[@]}" scp "$tarball" "${name}:mae_jax_src.tar.gz" "${location[@]}" --worker=all
    fetch="mkdir -p ${src} && tar -xzf ~/mae_jax_src.tar.gz -C ${src}"
  fi
  run_cmd "${tpu[@]}" ssh "$name" "${location[@]}" --worker=all \
    --command="set -e; ${fetch}; cd ${src}; ${install}"
}

do_run() {
  [[ ${#args[@]} -gt 0 ]] || die "give the mae-jax command after --, e.g. -- pretrain --config=... --workdir=gs://..."
  run_cmd "${tpu[@]}" ssh "$name" "${location[@]}" --worker=all \
    --command="set -o pipefail; mkdir -p ~/mae_jax_logs && cd ${src} && ${venv}/bin/mae-jax $(quote "${args[@]}") 2>&1 | tee -a ${log}"
}

do_ssh() {
  if [[ ${#args[@]} -gt 0 ]]; then
    run_cmd "${tpu[@]}" ssh "$name" "${location[@]}" --worker="${worker:-0}" --command="${args[*]}"
  else
    run_cmd "${tpu[@]}" ssh "$name" "${location[@]}" --worker="${worker:-0}"
  fi
}

do_logs() {
  run_cmd "${tpu[@]}" ssh "$name" "${location[@]}" --worker="${worker:-all}" \
    --command="echo \"== \$(hostname)\"; tail -n ${lines} ${log}"
}

do_delete() {
  if [[ "$queued" == 1 ]]; then
    run_cmd "${queue[@]}" delete "$name" "${location[@]}" --force --quiet
  else
    run_cmd "${tpu[@]}" delete "$name" "${location[@]}" --quiet
  fi
}

do_retry() {
  local attempt=0 s
  while true; do
    attempt=$((attempt + 1))
    if [[ "$dry_run" == 1 ]]; then
      s=READY
      echo "+ $(quote "${tpu[@]}" describe "$name" "${location[@]}" --format='value(state)')"
    else
      s="$(state)"
    fi
    case "$s" in
      READY) ;;
      MISSING|PREEMPTED)
        echo "# attempt ${attempt}: ${name} is ${s}; recreating it"
        [[ "$s" == MISSING ]] || do_delete
        do_create
        wait_until_ready
        do_setup ;;
      *)
        echo "# ${name} is ${s}; waiting"
        sleep 30
        continue ;;
    esac
    if [[ "$dry_run" == 1 ]]; then
      do_run
      echo "# dry run: after a failed run, a PREEMPTED/TERMINATED VM is deleted, created, set up and run again"
      return 0
    fi
    if do_run; then
      echo "# run finished"
      return 0
    fi
    if (( attempt >= max_retries )); then
      die "gave up after ${attempt} attempts"
    fi
    s="$(state)"
    if [[ "$s" == READY ]]; then
      die "the run failed on a healthy TPU VM (not a preemption); see: launch/tpu_vm.sh logs --name=${name} --zone=${zone}"
    fi
    echo "# ${name} is ${s} after the run stopped: a preemption; retrying in ${retry_wait_s} s"
    sleep "$retry_wait_s"
  done
}

"do_${subcommand}"
