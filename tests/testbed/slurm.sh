#!/usr/bin/env bash
# tests/testbed/slurm.sh -- a real Slurm cluster (slurmctld, one slurmd per network namespace,
# munge) on one Debian bookworm machine, no systemd, no cgroups, no accounting. Test bed for the
# Slurm and PBS launchers (issue 11). Recipe and traps: /work/shared/TESTBED-SLURM.md;
# tests/README.md, "Test beds", says how the tests use it.
#
#   slurm.sh up [netns] [N]   # (re)build: runs `down` first; N nodes n1..nN (default 4)
#   slurm.sh down             # cancel every job, stop our daemons (by pid), kill what is left in
#                             # the node namespaces, remove namespaces, links, route, tagged
#                             # /etc/hosts lines, slurm.conf and $SLURM_TB_DIR; idempotent
#   slurm.sh status           # sinfo / squeue; exit 0 when every node is up
#   slurm.sh env              # SLURM_CONF=... (for `eval`)
#   slurm.sh hosts            # put the names back into /etc/hosts (if something else removed them)
#
# Layout: bridge slurmbr0 = 10.200.0.1/24 in the root namespace (the controller and the "login
# node": sbatch, srun, salloc, qsub run from there); node nI = namespace slurm-nI, interface eth0 =
# 10.200.0.(10+I), hostname nI (own UTS namespace), CPUs=2, partition debug (default); tasks are
# bound to the CPUs of their grant (task/affinity; no cgroups).
# /etc/hosts gets "IP NAME # dragon-tests slurm" lines (slurmctl, n1..nN; rewritten in place; not
# the recipe's "# slurm-testbed" tag, which other test beds on the machine may use and clear).
# slurm.conf: $SLURM_TB_CONF (default /etc/slurm/slurm.conf, where every Slurm command looks;
# refused if a slurm.conf not written by this script is there: then set SLURM_TB_CONF elsewhere
# and export SLURM_CONF). Spool, logs, pid files: $SLURM_TB_DIR (default /tmp/slurm-testbed).
# Ports 16817 (slurmctld) and 16818 (slurmd, one per namespace): a Slurm of the machine on the
# default ports is not disturbed. munged: a running one is used as it is (and left running);
# otherwise the script starts one and stops it at `down`.
# Coexists with tests/testbed/netns.sh (10.201.0.0/24, tbbr0, tb-hN).
set -euo pipefail

NET=${SLURM_TB_NET:-10.200.0}
BR=${SLURM_TB_BR:-slurmbr0}
TAG='# dragon-tests slurm'
DIR=${SLURM_TB_DIR:-/tmp/slurm-testbed}
CONF=${SLURM_TB_CONF:-/etc/slurm/slurm.conf}
CTL_PORT=${SLURM_TB_CTL_PORT:-16817}
SLURMD_PORT=${SLURM_TB_SLURMD_PORT:-16818}
CPUS=${SLURM_TB_CPUS:-2}
CONF_MARK="# dragon-tests slurm: written by tests/testbed/slurm.sh; removed by its 'down'"
LOCK=/run/lock/slurm-testbed.lock
HOSTS_LOCK=/run/lock/testbed-etc-hosts.lock  # shared with netns.sh: one /etc/hosts editor at a time
export SLURM_CONF=$CONF
mkdir -p /run/lock

alive() { [ -n "$(ps -o stat= -p "$1" 2>/dev/null | grep -v Z)" ]; }   # zombies count as gone

hosts_set() {  # hosts_set "IP NAME" ... (no args: remove our lines); rewrites /etc/hosts in place
  local tmp line
  tmp=$(mktemp /tmp/slurm-testbed-hosts.XXXXXX)
  (
    flock -w 30 9
    grep -v "$TAG\$" /etc/hosts > "$tmp" || true
    for line in "$@"; do echo "$line $TAG" >> "$tmp"; done
    if ! cmp -s "$tmp" /etc/hosts; then cat "$tmp" > /etc/hosts; fi
  ) 9>"$HOSTS_LOCK"
  rm -f "$tmp"
}

conf_is_ours() { [ -f "$CONF" ] && head -n 1 "$CONF" | grep -qxF "$CONF_MARK"; }

node_namespaces() { ip netns list | awk '{print $1}' | grep -E '^slurm-n[0-9]+$' || true; }

write_conf() {
  local n=$1 i
  mkdir -p "$(dirname "$CONF")"
  {
    echo "$CONF_MARK"
    cat <<EOC
ClusterName=tb
# name check: localhost passes on any machine; the nodes dial the address in parentheses
SlurmctldHost=localhost($NET.1)
SlurmctldPort=$CTL_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
# tasks are bound to the CPUs of their grant (no cgroups needed): a 1-CPU step sees nproc 1.
# Every node numbers the machine's CPUs from 0, so n1's CPU 0 is also n2's.
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
KillWait=5
# batch jobs start at once rather than within 3 s (the default batch_sched_delay)
SchedulerParameters=batch_sched_delay=0
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
EOC
    for i in $(seq 1 "$n"); do
      echo "NodeName=n$i NodeAddr=$NET.$((10+i)) CPUs=$CPUS RealMemory=2000 State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$CONF"
}

munge_up() {
  if munge -n </dev/null >/dev/null 2>&1; then return 0; fi   # a munged answers: use it
  [ -s /etc/munge/munge.key ] || runuser -u munge -- /usr/sbin/mungekey
  install -d -o munge -g munge -m 0755 /run/munge   # systemd's RuntimeDirectory, absent here
  runuser -u munge -- /usr/sbin/munged 8>&-   # (fd 8: our lock; daemons must not keep it)
  cat /run/munge/munged.pid > "$DIR/run/munged.ours"
  local t
  for t in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "slurm.sh: munged does not answer" >&2; return 1
}

net_up() {
  local n=$1 i ns
  ip link add "$BR" type bridge
  ip addr add "$NET.1/24" dev "$BR"
  ip link set "$BR" up
  # safety net: with the bridge gone, $NET.x fails locally instead of following the default route
  ip route add unreachable "$NET.0/24" metric 4000
  for i in $(seq 1 "$n"); do
    ns=slurm-n$i
    ip netns add "$ns"
    ip link add "slurmv$i" type veth peer name eth0 netns "$ns"
    ip link set "slurmv$i" master "$BR" up
    ip -n "$ns" addr add "$NET.$((10+i))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
  hosts_add "$n"
}

hosts_add() {  # our names into /etc/hosts (also to repair them if something else removed them)
  local lines=("$NET.1 slurmctl") i
  for i in $(seq 1 "$1"); do lines+=("$NET.$((10+i)) n$i"); done
  hosts_set "${lines[@]}"
}

up() {
  local n=$1 i t
  if [ "$(id -u)" != 0 ]; then echo "slurm.sh: needs root" >&2; return 1; fi
  for t in slurmctld slurmd munged sinfo; do
    command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || {
      echo "slurm.sh: $t missing (deploy/install-deps.sh installs munge slurmctld slurmd slurm-client)" >&2; return 1; }
  done
  down
  # a Slurm of the machine (e.g. started by apt under systemd) would read this slurm.conf too
  local p foreign=""
  for p in $(pgrep -x slurmctld || true) $(pgrep -x slurmd || true); do alive "$p" && foreign="$foreign $p"; done
  if [ -n "$foreign" ]; then
    echo "slurm.sh: slurmctld/slurmd not of the test bed running (pids$foreign): stop them first" \
         "(systemctl disable --now slurmctld slurmd)" >&2
    return 1
  fi
  if [ -e "$CONF" ] && ! conf_is_ours; then
    echo "slurm.sh: $CONF exists and was not written by this script: set SLURM_TB_CONF to another path (and export SLURM_CONF=that path)" >&2
    return 1
  fi
  mkdir -p "$DIR/spool/ctld" "$DIR/run" "$DIR/log"
  for i in $(seq 1 "$n"); do mkdir -p "$DIR/spool/n$i"; done
  chmod 700 "$DIR"
  touch "$DIR/.slurm-testbed"
  munge_up
  write_conf "$n"
  net_up "$n"
  slurmctld -f "$CONF" 8>&-                   # daemonizes; pid file in $DIR/run
  for i in $(seq 1 "$n"); do
    # nsenter --net, not `ip netns exec`: that remounts /sys, hides /sys/fs/cgroup, and slurmd
    # 22.05 then dies ("No filesystem mounted on /sys/fs/cgroup")
    nsenter --net="/run/netns/slurm-n$i" unshare --uts \
      sh -c 'hostname "$0" && exec slurmd -f "$1" -N "$0"' "n$i" "$CONF" 8>&-
  done
  for t in $(seq 1 150); do                   # up to 30 s until every node is idle
    [ "$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)" -eq "$n" ] && return 0
    sleep 0.1
  done
  echo "slurm.sh: nodes did not come up" >&2; sinfo -N >&2 || true
  tail -n 20 "$DIR"/log/*.log >&2 || true
  return 1
}

down() {
  local f p pids="" i ns t
  # 1. end every job first: tasks outlive a killed slurmd
  if [ -s "$DIR/run/slurmctld.pid" ] && alive "$(cat "$DIR/run/slurmctld.pid")"; then
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
    for t in $(seq 1 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  # 2. our daemons, by pid file
  for f in "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid" "$DIR/run/munged.ours"; do
    [ -s "$f" ] || continue
    p=$(cat "$f")
    if alive "$p"; then kill "$p" 2>/dev/null || true; pids="$pids $p"; fi
  done
  for t in $(seq 1 100); do                   # up to 20 s, then SIGKILL
    local busy=0; for p in $pids; do alive "$p" && busy=1; done
    [ "$busy" = 0 ] && break; sleep 0.1
  done
  for p in $pids; do alive "$p" && { kill -9 "$p" 2>/dev/null || true; }; done
  # 3. whatever still runs in a node namespace was started on the test bed: end it by pid
  for ns in $(node_namespaces); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  for i in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^slurmv[0-9]+$' || true); do
    ip link del "$i" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  ip route del unreachable "$NET.0/24" metric 4000 2>/dev/null || true
  hosts_set
  if conf_is_ours; then rm -f "$CONF"; fi
  if [ -d "$DIR" ]; then
    if [ -e "$DIR/.slurm-testbed" ]; then rm -rf "$DIR"
    else echo "slurm.sh: $DIR is not the test bed's (no .slurm-testbed): left alone" >&2; fi
  fi
}

status() {
  conf_is_ours || { echo "slurm.sh: down (no $CONF of ours)"; return 1; }
  sinfo -N -o '%N %T %c %P' || return 1
  squeue || true
  [ -z "$(sinfo -h -N -t down,drain,fail,unknown -o %N 2>/dev/null)" ]
}

case "${1:-}" in
  up)
    shift
    [ "${1:-}" = netns ] && shift
    n=${1:-${SLURM_TB_NODES:-4}}
    [[ "$n" =~ ^[1-9][0-9]?$ ]] || { echo "slurm.sh: node count '$n' is not 1..99" >&2; exit 2; }
    exec 8>"$LOCK"; flock -w 60 8 || { echo "slurm.sh: $LOCK busy" >&2; exit 1; }
    start=$EPOCHREALTIME
    # not `if ! up`: in a condition, set -e would be off inside up
    set +e; ( set -e; up "$n" ); rc=$?; set -e
    if [ $rc != 0 ]; then echo "slurm.sh: up failed; tearing down" >&2; down; exit 1; fi
    awk -v a="$start" -v b="$EPOCHREALTIME" -v n="$n" 'BEGIN { printf "slurm.sh: up (%d nodes) in %.2f s\n", n, b - a }' >&2 ;;
  down)
    exec 8>"$LOCK"; flock -w 60 8 || { echo "slurm.sh: $LOCK busy" >&2; exit 1; }
    start=$EPOCHREALTIME
    down
    awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "slurm.sh: down in %.2f s\n", b - a }' >&2 ;;
  status) status ;;
  env) echo "SLURM_CONF='$CONF'" ;;
  hosts) conf_is_ours || { echo "slurm.sh: not up" >&2; exit 1; }
         hosts_add "$(grep -c '^NodeName=' "$CONF")" ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
