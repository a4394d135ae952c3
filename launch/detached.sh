#!/usr/bin/env bash
# One detached run per machine: started in its own session with no terminal, so it
# outlives the ssh connection (or shell) that started it. launch/tpu_vm.sh runs this
# on every TPU worker; it works the same on any Linux machine.
#
#   launch/detached.sh start  LOG_DIR COMMAND [ARGS...]
#   launch/detached.sh follow LOG_DIR [LINES]
#   launch/detached.sh wait   LOG_DIR
#   launch/detached.sh stop   LOG_DIR
#
# start   runs COMMAND detached; its output is appended to LOG_DIR/mae_jax.log, its
#         process id goes to LOG_DIR/mae_jax.pid and, when it ends, its exit status
#         to LOG_DIR/mae_jax.status. Refuses while the previous run is still going.
# follow  prints the last LINES [100] lines of the log and follows it until the run
#         ends (returns at once when none is running).
# wait    returns when the run has ended and prints "mae-jax exited with status S on
#         HOST"; exits 0 if S is 0, 3 if the run failed, 4 if none was started.
# stop    sends SIGTERM to the run (mae-jax saves a checkpoint and exits 0).
set -euo pipefail

die() {
  echo "error: $*" >&2
  exit 2
}

[[ $# -ge 2 ]] || die "usage: launch/detached.sh start|follow|wait|stop LOG_DIR [...]"
action="$1"
log_dir="$2"
shift 2
log="${log_dir}/mae_jax.log"
pid_file="${log_dir}/mae_jax.pid"
status_file="${log_dir}/mae_jax.status"

# The process id of the run if it is still going, else nothing.
running() {
  local pid
  pid="$(cat "$pid_file" 2>/dev/null || true)"
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    echo "$pid"
  fi
}

case "$action" in
  start)
    [[ $# -ge 1 ]] || die "give the command to run after LOG_DIR"
    mkdir -p "$log_dir"
    if pid="$(running)" && [[ -n "$pid" ]]; then
      die "a run is still going on $(hostname) (process ${pid}); wait for it, or stop it first"
    fi
    rm -f "$status_file"
    # setsid: a new session, so the hangup of the starting ssh session never reaches it.
    # shellcheck disable=SC2016  # expanded by the detached shell
    setsid bash -c '"${@:3}" >> "$1" 2>&1 < /dev/null; echo $? > "$2"' \
      detached "$log" "$status_file" "$@" < /dev/null > /dev/null 2>&1 &
    echo "$!" > "$pid_file"
    echo "# started on $(hostname) (process $!), log: ${log}"
    ;;
  follow)
    lines="${1:-100}"
    touch "$log"
    if pid="$(running)" && [[ -n "$pid" ]]; then
      tail -n "$lines" -F --pid="$pid" "$log"
    else
      tail -n "$lines" "$log"
    fi
    ;;
  wait)
    while pid="$(running)" && [[ -n "$pid" ]]; do
      sleep "${DETACHED_POLL_S:-10}"
    done
    if [[ ! -e "$status_file" ]]; then
      echo "no mae-jax run has ended on $(hostname)"
      exit 4
    fi
    status="$(cat "$status_file")"
    echo "mae-jax exited with status ${status} on $(hostname)"
    [[ "$status" == 0 ]] || exit 3
    ;;
  stop)
    if pid="$(running)" && [[ -n "$pid" ]]; then
      pkill -TERM -P "$pid"  # the command; its wrapper stays to record the status
      echo "# sent SIGTERM to the run on $(hostname) (process ${pid})"
    else
      echo "# no run is going on $(hostname)"
    fi
    ;;
  *) die "unknown action '${action}'; one of start, follow, wait, stop" ;;
esac
