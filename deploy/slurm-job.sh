#!/bin/bash
#SBATCH --job-name=dragon-workflow
#SBATCH --nodes=2
#SBATCH --exclusive
#SBATCH --time=00:30:00
#SBATCH --output=dragon-workflow-%j.out
#
# A Parsl workflow on every node of a Slurm job, through one dragond head:
#
#   sbatch deploy/slurm-job.sh my_workflow.py [ARGS...]       # or sbatch -N 8 -t 2:00:00 ...
#
# The head runs on the job's first node and starts one agent per node with one srun step
# (dragond start inside a job needs no flags: --launcher auto sees SLURM_JOB_ID); the workflow
# runs here with $DRAGON_HEAD pointing at the head, so DragonExecutor() (no address) uses it;
# the head is stopped when the workflow ends, fails, or the job is cancelled.
#
# Settings (environment, exported to the job by sbatch):
#   DRAGOND       dragond to run (default: dragond in PATH); dragon-agent must sit next to it,
#                 at the same path on every node
#   PYTHON        interpreter of the workflow and of the workers (default: python3); it must
#                 import parsl and dragon_parsl on every node
#   DRAGON_HOME   where the run directory goes (default ~/.dragon): a filesystem every node sees
#   DRAGOND_ARGS  more `dragond start` flags, e.g. "--workers 16 --node-grace 60"
set -euo pipefail

DRAGOND=${DRAGOND:-dragond}
PYTHON=${PYTHON:-python3}
export DRAGON_HOME=${DRAGON_HOME:-$HOME/.dragon}
if [ $# -lt 1 ]; then echo "usage: sbatch $0 WORKFLOW.py [ARGS...]" >&2; exit 2; fi
run_dir="$DRAGON_HOME/runs/slurm-$SLURM_JOB_ID"
mkdir -p "$run_dir"
ready="$run_dir/ready.txt"

# The head in the foreground of a background process: it is this script's child, so it ends
# with the job even where Slurm tracks processes by parentage (proctrack/linuxproc), and
# --exit-with-parent stops it (and its agents) should this script die first.
t0=$EPOCHREALTIME
# shellcheck disable=SC2086  # DRAGOND_ARGS is a list of flags
"$DRAGOND" start --foreground --exit-with-parent --no-current --run-dir "$run_dir" \
  --python "$PYTHON" ${DRAGOND_ARGS:-} > "$ready" &
head_pid=$!
stop_head() {
  if kill -0 "$head_pid" 2>/dev/null; then
    "$DRAGOND" stop --run-dir "$run_dir" || kill "$head_pid" 2>/dev/null || true
    wait "$head_pid" || true
  fi
}
trap stop_head EXIT
trap 'exit 143' TERM INT

# `dragond start` prints "dragond: head listening on ADDR (...)" once every agent is ready.
until grep -q '^dragond: head listening on ' "$ready" 2>/dev/null; do
  if ! kill -0 "$head_pid" 2>/dev/null; then
    echo "dragon: dragond start failed (see above and $run_dir/dragond.log)" >&2
    exit 1
  fi
  sleep 0.1
done
DRAGON_HEAD=$(sed -n 's/^dragond: head listening on \([^ ]*\) .*/\1/p' "$ready")
export DRAGON_HEAD
echo "dragon: head $DRAGON_HEAD ready on $SLURM_JOB_NUM_NODES node(s) after" \
  "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }') s: $(cat "$ready")"

"$PYTHON" "$@"
