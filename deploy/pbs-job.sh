#!/bin/bash
#PBS -N dragon-workflow
#PBS -l nodes=2,walltime=00:30:00
#PBS -j oe
#
# A Parsl workflow on every node of a PBS job, through one dragond head:
#
#   qsub -V -F "my_workflow.py ARGS" deploy/pbs-job.sh         # Torque: -F passes arguments
#   qsub -V -v WORKFLOW=my_workflow.py deploy/pbs-job.sh        # or name it in the environment
#
# The head runs on the job's first node and starts one agent on every host of $PBS_NODEFILE
# (dragond start inside a job needs no flags: --launcher auto sees PBS_JOBID and
# PBS_NODEFILE); how it reaches the other hosts is DRAGON_PBS_EXEC: ssh (default; password-less
# ssh between the job's nodes), pbsdsh (Torque's), or mpiexec (MPICH/Hydra or Cray PALS
# syntax). Under Slurm's qsub wrapper (slurm-wlm-torque: no PBS_NODEFILE) it starts them with
# one srun step instead. The workflow runs here with $DRAGON_HEAD pointing at the head, so
# DragonExecutor() (no address) uses it; the head is stopped when the workflow ends, fails, or
# the job is deleted.
#
# Settings (environment; qsub -V hands yours to the job):
#   WORKFLOW      the workflow and its arguments, if not given as qsub -F arguments
#   DRAGOND       dragond to run (default: dragond in PATH); dragon-agent must sit next to it,
#                 at the same path on every node
#   PYTHON        interpreter of the workflow and of the workers (default: python3)
#   DRAGON_HOME   where the run directory goes (default ~/.dragon): a filesystem every node sees
#   DRAGON_PBS_EXEC  ssh | pbsdsh | mpiexec (default ssh)
#   DRAGOND_ARGS  more `dragond start` flags, e.g. "--workers 16"
set -euo pipefail

cd "${PBS_O_WORKDIR:-.}"
DRAGOND=${DRAGOND:-dragond}
PYTHON=${PYTHON:-python3}
export DRAGON_HOME=${DRAGON_HOME:-$HOME/.dragon}
# shellcheck disable=SC2086  # WORKFLOW is a command line: the script and its arguments
if [ $# -eq 0 ] && [ -n "${WORKFLOW:-}" ]; then set -- $WORKFLOW; fi
if [ $# -lt 1 ]; then echo "usage: qsub -V -F 'WORKFLOW.py [ARGS]' $0" >&2; exit 2; fi
job=${PBS_JOBID:-${SLURM_JOB_ID:-$$}}
run_dir="$DRAGON_HOME/runs/pbs-${job%%.*}"
mkdir -p "$run_dir"
ready="$run_dir/ready.txt"

# The head in the foreground of a background process: it ends with the job, and
# --exit-with-parent stops it (and its agents) should this script die first.
t0=$EPOCHREALTIME
# shellcheck disable=SC2086  # DRAGOND_ARGS is a list of flags
"$DRAGOND" start --foreground --exit-with-parent --no-current --run-dir "$run_dir" \
  --python "$PYTHON" --pbs-exec "${DRAGON_PBS_EXEC:-ssh}" ${DRAGOND_ARGS:-} > "$ready" &
head_pid=$!
stop_head() {
  if kill -0 "$head_pid" 2>/dev/null; then
    "$DRAGOND" stop --run-dir "$run_dir" || kill "$head_pid" 2>/dev/null || true
    wait "$head_pid" || true
  fi
}
trap stop_head EXIT
trap 'exit 143' TERM INT

until grep -q '^dragond: head listening on ' "$ready" 2>/dev/null; do
  if ! kill -0 "$head_pid" 2>/dev/null; then
    echo "dragon: dragond start failed (see above and $run_dir/dragond.log)" >&2
    exit 1
  fi
  sleep 0.1
done
DRAGON_HEAD=$(sed -n 's/^dragond: head listening on \([^ ]*\) .*/\1/p' "$ready")
export DRAGON_HEAD
echo "dragon: head $DRAGON_HEAD ready after" \
  "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }') s: $(cat "$ready")"

"$PYTHON" "$@"
