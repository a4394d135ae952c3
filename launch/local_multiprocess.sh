#!/usr/bin/env bash
# Runs N local CPU processes of one mae-jax command, joined by jax.distributed on
# 127.0.0.1: a multi-host run on one machine, for testing multi-host code paths.
#
#   launch/local_multiprocess.sh [OPTIONS] N COMMAND [ARGS...]
#   launch/local_multiprocess.sh 2 pretrain --config=configs/pretrain_fmnist.py \
#       --workdir=/tmp/w --config.mesh.data=4 --config.mesh.fsdp=2
#
# Options (or the environment variables in brackets):
#   --devices_per_process=K  fake CPU devices per process [DEVICES_PER_PROCESS, 4]
#   --port=P                 coordinator port [PORT, a free one]
#   --log_dir=DIR            where processes 1..N-1 write process_<i>.log
#                            [LOG_DIR, a new temporary directory]
#   --timeout_s=S            --distributed_timeout_s passed to every process
#                            [DISTRIBUTED_TIMEOUT_S, 120]
#   --dry-run                print the commands, run nothing
# The command is run as ${MAE_JAX:-mae-jax} (e.g. MAE_JAX="python -m mae_jax").
# Process 0 writes to this terminal. Exits with the first non-zero status of any
# process, after stopping the others; 0 when all succeed. Ctrl-C or SIGTERM to this
# script sends SIGTERM to every process (mae-jax saves a checkpoint at the same step
# on all of them) and waits for them to finish before exiting with 130.
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
}

devices="${DEVICES_PER_PROCESS:-4}"
port="${PORT:-}"
log_dir="${LOG_DIR:-}"
timeout_s="${DISTRIBUTED_TIMEOUT_S:-120}"
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices_per_process=*) devices="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --log_dir=*) log_dir="${1#*=}" ;;
    --timeout_s=*) timeout_s="${1#*=}" ;;
    --dry-run|--dry_run) dry_run=1 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "error: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
  shift
done

if [[ $# -lt 2 ]]; then
  echo "error: give the number of processes and a mae-jax command" >&2
  usage
fi
num_processes="$1"
shift
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N must be a positive integer, got '$num_processes'" >&2
  exit 2
fi
if ! [[ "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --devices_per_process must be a positive integer, got '$devices'" >&2
  exit 2
fi

read -r -a mae_jax <<< "${MAE_JAX:-mae-jax}"
if [[ -z "$port" ]]; then
  port="$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
if [[ "$dry_run" == 1 ]]; then
  log_dir="${log_dir:-TEMPORARY_DIRECTORY}"
elif [[ -z "$log_dir" ]]; then
  log_dir="$(mktemp -d "${TMPDIR:-/tmp}/mae_jax_local.XXXXXX")"
else
  mkdir -p "$log_dir"
fi

xla_flags="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

pids=()
# shellcheck disable=SC2317  # called from the trap
stop_and_wait() {
  trap '' INT TERM  # a second Ctrl-C must not cut the checkpoint short
  echo "# $1: asking every process to save and stop; waiting for them" >&2
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  exit 130
}
trap 'stop_and_wait interrupted' INT
trap 'stop_and_wait terminated' TERM

echo "# ${num_processes} processes x ${devices} CPU devices, coordinator 127.0.0.1:${port}, logs in ${log_dir}"
for ((i = 0; i < num_processes; i++)); do
  cmd=("${mae_jax[@]}" "$@" "--coordinator_address=127.0.0.1:${port}"
       "--num_processes=${num_processes}" "--process_id=${i}"
       "--distributed_timeout_s=${timeout_s}")
  echo "+ XLA_FLAGS='${xla_flags# }' ${cmd[*]}"
  if [[ "$dry_run" == 1 ]]; then
    continue
  fi
  if [[ "$i" == 0 ]]; then
    XLA_FLAGS="$xla_flags" "${cmd[@]}" &
  else
    XLA_FLAGS="$xla_flags" "${cmd[@]}" > "${log_dir}/process_${i}.log" 2>&1 &
  fi
  pids+=("$!")
done
[[ "$dry_run" == 1 ]] && exit 0

# Wait for all; on the first failure stop the others (they would wait for the
# failed peer until their own timeouts).
status=0
running=("${!pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  still=()
  for i in "${running[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      still+=("$i")
      continue
    fi
    rc=0
    wait "${pids[$i]}" || rc=$?
    if [[ "$rc" != 0 && "$status" == 0 ]]; then
      status="$rc"
      echo "error: process ${i} exited with status ${rc}; stopping the others" >&2
      if [[ "$i" != 0 ]]; then
        tail -n 20 "${log_dir}/process_${i}.log" >&2 || true
      fi
      for j in "${!pids[@]}"; do
        kill -KILL "${pids[$j]}" 2>/dev/null || true
      done
    fi
  done
  running=("${still[@]}")
  if [[ ${#running[@]} -gt 0 ]]; then
    sleep 0.2
  fi
done
exit "$status"
