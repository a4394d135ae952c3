#!/usr/bin/env bash
# Submits launch/slurm_gpu.sbatch: N nodes x G GPUs, one mae-jax process per node.
#
#   launch/slurm_submit.sh [OPTIONS] -- MAE_JAX_ARGS...
#   launch/slurm_submit.sh --nodes=4 --gpus_per_node=8 --partition=gpu -- pretrain \
#       --config=configs/pretrain_imagenet.py:variant=L/16 --workdir=/shared/mae_l16
#
# Options:
#   --nodes=N            [2]
#   --gpus_per_node=G    [8]
#   --cpus_per_task=C    [32]
#   --time=HH:MM:SS      [48:00:00]
#   --partition=P, --account=A, --qos=Q   passed to sbatch when given
#   --job_name=NAME      [mae-jax]
#   --mae_jax=COMMAND    the mae-jax command on the nodes [MAE_JAX, mae-jax]
#   --dry-run            print the sbatch command line, submit nothing
set -euo pipefail

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

nodes=2
gpus=8
cpus=32
time_limit="48:00:00"
job_name="mae-jax"
mae_jax="${MAE_JAX:-mae-jax}"
extra=()
dry_run=0
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --gpus_per_node=*) gpus="${1#*=}" ;;
    --cpus_per_task=*) cpus="${1#*=}" ;;
    --time=*) time_limit="${1#*=}" ;;
    --partition=*|--account=*|--qos=*) extra+=("$1") ;;
    --job_name=*) job_name="${1#*=}" ;;
    --mae_jax=*) mae_jax="${1#*=}" ;;
    --dry-run|--dry_run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; args=("$@"); break ;;
    *) echo "error: unknown option '$1' (mae-jax arguments go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ ${#args[@]} -gt 0 ]] || { echo "error: give the mae-jax command after --" >&2; exit 2; }
for value in "$nodes" "$gpus" "$cpus"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || { echo "error: '$value' is not a positive integer" >&2; exit 2; }
done

cmd=(sbatch "--job-name=${job_name}" "--nodes=${nodes}" --ntasks-per-node=1
     "--gpus-per-node=${gpus}" "--cpus-per-task=${cpus}" "--time=${time_limit}"
     "${extra[@]}" "--export=ALL,GPUS_PER_NODE=${gpus},MAE_JAX=${mae_jax}"
     "$(dirname "$0")/slurm_gpu.sbatch" "${args[@]}")

quoted=()
for arg in "${cmd[@]}"; do
  if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    quoted+=("$arg")
  else
    quoted+=("'${arg//\'/\'\\\'\'}'")
  fi
done
echo "+ ${quoted[*]}"
if [[ "$dry_run" == 0 ]]; then
  "${cmd[@]}"
fi
