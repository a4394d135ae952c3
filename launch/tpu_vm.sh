#!/usr/bin/env bash
# Cloud TPU VMs (one host or a pod slice) for mae-jax, through gcloud.
#
#   launch/tpu_vm.sh SUBCOMMAND [OPTIONS] [-- ARGS...]
#
# Subcommands:
#   create   create the TPU VM, or a queued resource with --queued (waits until ACTIVE)
#   setup    copy this checkout (or clone --repo) to every worker, then
#            pip install -e '.[tpu]' into ~/mae_jax_venv there
#   run      start `mae-jax ARGS` on all workers at once, detached (launch/detached.sh):
#            it keeps running when this machine's ssh connection ends; each worker
#            appends its output to ~/mae_jax_logs/mae_jax.log on its own disk
#   logs     follow the log of --worker (default 0) until the run ends
#   stop     SIGTERM to the run on every worker: it saves a checkpoint and exits
#   ssh      a shell on --worker (default 0), or run `ARGS` there
#   delete   delete the TPU VM (with --queued: the queued resource and its VM)
#   retry    run, follow and wait until the run succeeds: whenever the VM was
#            preempted, recreate it, set it up and run again. The run resumes from
#            the checkpoints in its --workdir, so give a gs:// workdir.
#
# Options (defaults from the environment variables in brackets):
#   --name=NAME             TPU name [TPU_NAME, mae-jax]
#   --zone=ZONE             [ZONE, us-central2-b]
#   --project=PROJECT       [PROJECT, gcloud's configured project]
#   --accelerator=TYPE      v4-64, v5litepod-16, v5p-32, v6e-16, ... [ACCELERATOR_TYPE, v4-8]
#   --version=RUNTIME       TPU software version [RUNTIME_VERSION; by generation:
#                           v4 and older tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite,
#                           v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e]
#   --spot | --preemptible  spot or preemptible capacity (default: on demand)
#   --queued                create through a queued resource
#   --node-count=N          multislice: N slices of --accelerator in one queued
#                           resource (implies --queued); run sets mesh.dcn_data=N
#   --node=N|all            multislice: the slice for ssh/logs [0]
#   --repo=URL              setup clones URL (--branch=BRANCH) instead of copying
#   --python=PYTHON         interpreter for the venv on the workers [python3.11]
#   --worker=N|all          worker for ssh/logs [0]
#   --lines=N               lines of the log shown before following [100]
#   --max_retries=N         runs retry attempts [20]
#   --dry-run               print the commands, run nothing
#
# Every command is printed (prefixed with "+") before it runs.
#
#   launch/tpu_vm.sh create --name=mae-l16 --accelerator=v4-64 --spot
#   launch/tpu_vm.sh setup --name=mae-l16 --accelerator=v4-64
#   launch/tpu_vm.sh run --name=mae-l16 -- pretrain \
#       --config=configs/pretrain_imagenet.py:variant=L/16 --workdir=gs://BUCKET/mae_l16
#   launch/tpu_vm.sh logs --name=mae-l16
set -euo pipefail

usage() {
  sed -n '2,48p' "$0" | sed 's/^# \{0,1\}//'
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
version="${RUNTIME_VERSION:-}"
capacity=""
queued=0
node_count=1
node=""
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
  create|setup|run|logs|stop|ssh|delete|retry) ;;
  -h|--help|help) usage 0 ;;
  *) die "unknown subcommand '$subcommand'; one of create, setup, run, logs, stop, ssh, delete, retry" ;;
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
    --node-count=*|--node_count=*) node_count="${1#*=}" ;;
    --node=*) node="${1#*=}" ;;
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
[[ "$node_count" =~ ^[1-9][0-9]*$ ]] || die "--node-count must be a positive integer, got '${node_count}'"
if (( node_count > 1 )); then
  queued=1  # multislice exists only as a queued resource
elif [[ -n "$node" ]]; then
  die "--node is for multislice (--node-count > 1)"
fi
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

# The runtime (TPU software version) of an accelerator generation, for JAX.
default_version() {
  case "$accelerator" in
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime version for --accelerator=${accelerator}; give --version=RUNTIME (see https://cloud.google.com/tpu/docs/runtimes)" ;;
  esac
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
logs_dir='~/mae_jax_logs'
detached="cd ${src} && bash launch/detached.sh"

# `gcloud ... ssh|scp` for the workers: a slice's (`--worker=W`), or with multislice
# its queued resource's (`--node=N --worker=W`; all slices for W=all).
#   on_workers ssh|scp W TARGET... [--command=COMMAND]
on_workers() {
  local verb="$1" which="$2" arg targets=() command=()
  shift 2
  for arg in "$@"; do
    if [[ "$arg" == --command=* ]]; then command=("$arg"); else targets+=("$arg"); fi
  done
  if (( node_count > 1 )); then
    local n="${node:-0}"
    [[ "$which" == all ]] && n=all
    run_cmd "${queue[@]}" "$verb" "${targets[@]}" "${location[@]}" --node="$n" \
      --worker="$which" "${command[@]}"
  else
    run_cmd "${tpu[@]}" "$verb" "${targets[@]}" "${location[@]}" --worker="$which" \
      "${command[@]}"
  fi
}

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
  local runtime="$version" nodes
  [[ -n "$runtime" ]] || runtime="$(default_version)" || exit 2
  if [[ "$queued" == 1 ]]; then
    if (( node_count > 1 )); then
      nodes=(--node-count="$node_count" --node-prefix="$name")
    else
      nodes=(--node-id="$name")
    fi
    run_cmd "${queue[@]}" create "$name" "${location[@]}" "${nodes[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$runtime" ${capacity:+"$capacity"}
    wait_until_ready
  else
    run_cmd "${tpu[@]}" create "$name" "${location[@]}" --accelerator-type="$accelerator" \
      --version="$runtime" ${capacity:+"$capacity"}
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
    on_workers scp all "$tarball" "${name}:mae_jax_src.tar.gz"
    fetch="mkdir -p ${src} && tar -xzf ~/mae_jax_src.tar.gz -C ${src}"
  fi
  on_workers ssh all "$name" --command="set -e; ${fetch}; cd ${src}; ${install}"
}

# The mae-jax arguments; multislice adds mesh.dcn_data = the number of slices.
mae_jax_args() {
  local arg
  [[ ${#args[@]} -gt 0 ]] || die "give the mae-jax command after --, e.g. -- pretrain --config=... --workdir=gs://..."
  if (( node_count > 1 )); then
    for arg in "${args[@]}"; do
      if [[ "$arg" == --config.mesh.dcn_data=* && "${arg#*=}" != "$node_count" ]]; then
        die "${arg} contradicts --node-count=${node_count}: the data axis spans the ${node_count} slices"
      fi
    done
    if [[ " ${args[*]} " != *" --config.mesh.dcn_data="* ]]; then
      args+=("--config.mesh.dcn_data=${node_count}")
    fi
  fi
}

do_run() {
  mae_jax_args
  on_workers ssh all "$name" \
    --command="${detached} start ${logs_dir} ${venv}/bin/mae-jax $(quote "${args[@]}")"
  if [[ "$subcommand" == run ]]; then
    local slices=()
    (( node_count > 1 )) && slices=(--node-count="$node_count")
    echo "# detached on every worker; follow it: launch/tpu_vm.sh logs $(quote --name="$name" "${location[@]}" "${slices[@]}")"
  fi
}

do_logs() {
  on_workers ssh "${worker:-0}" "$name" --command="${detached} follow ${logs_dir} ${lines}"
}

do_stop() {
  on_workers ssh all "$name" --command="${detached} stop ${logs_dir}"
}

# Waits for the run on every worker; 0 if all succeeded, 3 if one failed, else the
# connection's status (the run itself may still be going).
do_wait() {
  local out rc=0
  out="$(on_workers ssh all "$name" --command="${detached} wait ${logs_dir}")" || rc=$?
  echo "$out"
  if grep -q "exited with status [1-9]" <<< "$out"; then
    return 3
  fi
  return "$rc"
}

do_ssh() {
  if [[ ${#args[@]} -gt 0 ]]; then
    on_workers ssh "${worker:-0}" "$name" --command="${args[*]}"
  else
    on_workers ssh "${worker:-0}" "$name"
  fi
}

do_delete() {
  if [[ "$queued" == 1 ]]; then
    run_cmd "${queue[@]}" delete "$name" "${location[@]}" --force --quiet
  else
    run_cmd "${tpu[@]}" delete "$name" "${location[@]}" --quiet
  fi
}

do_retry() {
  local attempt=0 started=0 s rc
  while true; do
    attempt=$((attempt + 1))
    if [[ "$dry_run" == 1 ]]; then
      s=READY
      if [[ "$queued" == 1 ]]; then
        echo "+ $(quote "${queue[@]}" describe "$name" "${location[@]}" --format='value(state.state)')"
      else
        echo "+ $(quote "${tpu[@]}" describe "$name" "${location[@]}" --format='value(state)')"
      fi
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
        do_setup
        started=0 ;;
      *)
        echo "# ${name} is ${s}; waiting"
        sleep 30
        continue ;;
    esac
    if [[ "$started" == 0 ]]; then
      do_run
      started=1
    fi
    do_logs || true  # follows worker 0 until its run ends or the connection drops
    rc=0
    do_wait || rc=$?
    if [[ "$dry_run" == 1 ]]; then
      echo "# dry run: after a failed run, a PREEMPTED/TERMINATED VM is deleted, created, set up and run again"
      return 0
    fi
    if [[ "$rc" == 0 ]]; then
      echo "# run finished"
      return 0
    fi
    if (( attempt >= max_retries )); then
      die "gave up after ${attempt} attempts"
    fi
    s="$(state)"
    if [[ "$s" == READY && "$rc" == 3 ]]; then
      die "the run failed on a healthy TPU VM (not a preemption); see: launch/tpu_vm.sh logs --name=${name} --zone=${zone}"
    elif [[ "$s" == READY ]]; then
      echo "# lost the connection to ${name}; the run goes on detached; reconnecting in ${retry_wait_s} s"
    else
      echo "# ${name} is ${s} after the run stopped: a preemption; retrying in ${retry_wait_s} s"
    fi
    sleep "$retry_wait_s"
  done
}

"do_${subcommand}"
