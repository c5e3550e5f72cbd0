#!/usr/bin/env bash
# tests/testbed/netns.sh -- four "hosts" h1..h4 on one Linux box: network namespaces on a private
# bridge, each with its own sshd and (UTS) hostname. Test bed for the ssh launcher, remote agents
# and node faults (issue 11). Recipe and traps: /work/shared/TESTBED-NETNS.md; tests/README.md,
# "Test beds", says how the tests use it.
#
#   netns.sh up       # (re)build everything; runs `down` first, so it also clears a crashed run
#   netns.sh down     # kill what runs in the namespaces (by pid), remove namespaces, links,
#                     # route, tagged /etc/hosts lines and $TB_DIR; idempotent
#   netns.sh status   # what is up; exit 0 when every host answers ssh
#   netns.sh exec H CMD...   # run CMD "on" host H: its netns + a UTS namespace named H (no ssh)
#   netns.sh env      # the bed's settings as shell assignments (for `eval`)
#   netns.sh hosts    # put the names back into /etc/hosts (if something else removed them)
#
# Layout (all names configurable through the environment):
#   bridge tbbr0 (root netns); namespace tb-hN with interface tb0 = 10.201.0.N, bridge side tbv-hN;
#   the root namespace ("head", name tbhead) has its own tb0 = 10.201.0.254 (peer tbv-tbhead), so
#   the test interface is called tb0 everywhere (UCX_NET_DEVICES=tb0, HYDRA_IFACE=tb0).
#   /etc/hosts gets "IP NAME # dragon-tests netns" lines (rewritten in place, only tagged lines;
#   not the recipe's "# tb-netns" tag, which other test beds on the machine may use and clear).
#   $TB_DIR (default /tmp/tb-netns): keys, ssh_config, sshd configs and pid files, the ssh wrapper
#   $TB_DIR/ssh (also as $TB_DIR/bin/ssh, to put first in PATH).
#   TB_TCP_RETRIES2=N: net.ipv4.tcp_retries2 inside the namespaces only (never the root's).
#   TB_SSH_SKIP_BASHRC=1: ssh commands do not source root's ~/.bashrc (see below).
#
# Needs root and `ip netns`. Touches only the above. Never kills by name, never sets the
# machine's hostname. Coexists with tests/testbed/slurm.sh (10.200.0.0/24, slurmbr0, slurm-nN).
set -euo pipefail

TB_HOSTS=${TB_HOSTS:-"h1 h2 h3 h4"}     # host names; host number i gets $TB_NET.i
TB_NS_PREFIX=${TB_NS_PREFIX:-tb-}      # namespace of host h = ${TB_NS_PREFIX}h
TB_NET=${TB_NET:-10.201.0}             # private /24 of the test hosts
TB_HEAD_NAME=${TB_HEAD_NAME:-tbhead}   # the root namespace's name on the test net
TB_HEAD_IP=${TB_HEAD_IP:-$TB_NET.254}
TB_BR=${TB_BR:-tbbr0}
TB_IF=${TB_IF:-tb0}                    # test interface, the same name in every namespace
TB_DIR=${TB_DIR:-/tmp/tb-netns}
TB_TCP_RETRIES2=${TB_TCP_RETRIES2:-}
TB_ACCEPT_ENV=${TB_ACCEPT_ENV:-"LANG LC_* UCX_* TB_*"}   # sshd AcceptEnv
TB_SSH_SKIP_BASHRC=${TB_SSH_SKIP_BASHRC:-0}  # 1: remote commands skip root's ~/.bashrc (sshd SetEnv
                                       # SHLVL=1; Debian's bash sources it for ssh commands only at
                                       # level 1). Faster, and PATH is then sshd's plain default.
TB_TAG="# dragon-tests netns"
TB_HEAD_VETH=tbv-$TB_HEAD_NAME; TB_HEAD_VETH=${TB_HEAD_VETH:0:15}   # bridge side of the head's tb0
TB_LOCK=${TB_LOCK:-/run/lock/tb-netns.lock}
HOSTS_LOCK=/run/lock/testbed-etc-hosts.lock  # shared with slurm.sh: one /etc/hosts editor at a time
MARK=.tb-netns                         # $TB_DIR is ours (and may be removed) only if it holds this

ns_of() { echo "${TB_NS_PREFIX}$1"; }

tb_ip() {  # tb_ip h3 -> 10.201.0.3 ; tb_ip tbhead -> 10.201.0.254
  local want=$1 i=0 h
  [ "$want" = "$TB_HEAD_NAME" ] && { echo "$TB_HEAD_IP"; return; }
  for h in $TB_HOSTS; do i=$((i+1)); [ "$h" = "$want" ] && { echo "$TB_NET.$i"; return; }; done
  echo "netns.sh: unknown host '$want' (hosts: $TB_HOSTS)" >&2; return 1
}

# Run a command "on" host h: its network namespace plus a private UTS namespace named h.
# `ip netns exec` and `unshare` exec, and sh execs the command: started as a direct child
# (not through this shell function), the pid is the command's.
tb_exec() {
  local h=$1; shift
  tb_ip "$h" >/dev/null
  exec ip netns exec "$(ns_of "$h")" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$h" "$@"
}

# /etc/hosts: one file for all namespaces. Only our tagged lines change; the file is rewritten
# in place (cat >, not mv or sed -i), which also works where it is a bind mount.
hosts_set() {  # hosts_set "IP NAME" ... (no args: remove our lines)
  local tmp line
  tmp=$(mktemp /tmp/tb-netns-hosts.XXXXXX)
  (
    flock -w 30 9
    grep -v "$TB_TAG\$" /etc/hosts > "$tmp" || true
    for line in "$@"; do echo "$line $TB_TAG" >> "$tmp"; done
    if ! cmp -s "$tmp" /etc/hosts; then cat "$tmp" > /etc/hosts; fi
  ) 9>"$HOSTS_LOCK"
  rm -f "$tmp"
}

tb_hosts_add() {  # our names into /etc/hosts (also to repair them if something else removed them)
  local lines=("$TB_HEAD_IP $TB_HEAD_NAME") i=0 h
  for h in $TB_HOSTS; do i=$((i+1)); lines+=("$TB_NET.$i $h"); done
  hosts_set "${lines[@]}"
}

alive() { [ -n "$(ps -o stat= -p "$1" 2>/dev/null | grep -v Z)" ]; }   # zombies count as gone

tb_down() {
  local h ns p pf pids=""
  for h in $TB_HOSTS; do
    ns=$(ns_of "$h")
    pf=$TB_DIR/sshd.$h.pid
    if [ -s "$pf" ] && [ -e "$TB_DIR/$MARK" ]; then
      p=$(cat "$pf"); alive "$p" && { kill "$p" 2>/dev/null || true; }
    fi
    # everything still running in the namespace was started on the test bed: end it by pid
    if [ -e "/run/netns/$ns" ]; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; pids="$pids $p"; done
    fi
  done
  for h in $TB_HOSTS; do
    ns=$(ns_of "$h")
    if [ -e "/run/netns/$ns" ]; then ip netns del "$ns" 2>/dev/null || true; fi
    ip link del "tbv-$h" 2>/dev/null || true   # normally gone with the namespace already
  done
  ip link del "$TB_IF" 2>/dev/null || true     # also removes its peer $TB_HEAD_VETH
  ip link del "$TB_BR" 2>/dev/null || true
  ip route del unreachable "$TB_NET.0/24" metric 4000 2>/dev/null || true
  hosts_set
  if [ -d "$TB_DIR" ]; then
    if [ -e "$TB_DIR/$MARK" ]; then rm -rf "$TB_DIR"
    else echo "netns.sh: $TB_DIR is not the test bed's (no $MARK): left alone" >&2; fi
  fi
}

tb_up() {
  local h ns i ip t
  if [ "$(id -u)" != 0 ]; then echo "netns.sh: needs root" >&2; return 1; fi
  ip netns list >/dev/null || { echo "netns.sh: 'ip netns' does not work here" >&2; return 1; }
  [ -x /usr/sbin/sshd ] || { echo "netns.sh: /usr/sbin/sshd missing (deploy/install-deps.sh installs openssh-server)" >&2; return 1; }
  tb_down
  if [ -e "$TB_DIR" ]; then echo "netns.sh: $TB_DIR exists and is not the test bed's" >&2; return 1; fi
  mkdir -p "$TB_DIR/bin" /run/sshd      # /run/sshd: sshd refuses to start without it
  chmod 700 "$TB_DIR"; touch "$TB_DIR/$MARK"

  # 1. bridge + the root namespace's leg (tb0 <-> tbv-tbhead on the bridge)
  ip link add "$TB_BR" type bridge
  ip link set "$TB_BR" up
  ip link add "$TB_IF" type veth peer name "$TB_HEAD_VETH"
  ip link set "$TB_HEAD_VETH" master "$TB_BR" up
  ip addr add "$TB_HEAD_IP/24" dev "$TB_IF"
  ip link set "$TB_IF" up
  # safety net: with tb0 down or gone, $TB_NET.x fails locally instead of following the default route
  ip route add unreachable "$TB_NET.0/24" metric 4000

  # 2. one namespace per host: tb0 inside, tbv-<h> on the bridge; no default route inside
  i=0
  for h in $TB_HOSTS; do
    i=$((i+1)); ns=$(ns_of "$h")
    ip netns add "$ns"
    ip link add "tbv-$h" type veth peer name "$TB_IF" netns "$ns"
    ip link set "tbv-$h" master "$TB_BR" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$TB_NET.$i/24" dev "$TB_IF"
    ip -n "$ns" link set "$TB_IF" up
    if [ -n "$TB_TCP_RETRIES2" ]; then
      ip netns exec "$ns" sysctl -qw net.ipv4.tcp_retries2="$TB_TCP_RETRIES2"
    fi
  done

  # 3. names
  tb_hosts_add

  # 4. ssh: one client key, one host key, a client config and a wrapper
  ssh-keygen -q -t ed25519 -N '' -C tb-netns -f "$TB_DIR/id_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C tb-netns-host -f "$TB_DIR/ssh_host_ed25519_key"
  cp "$TB_DIR/id_ed25519.pub" "$TB_DIR/authorized_keys"
  cat > "$TB_DIR/ssh_config" <<EOC
Host *
  User root
  IdentityFile $TB_DIR/id_ed25519
  IdentitiesOnly yes
  BatchMode yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  ConnectTimeout 5
  ServerAliveInterval 2
  ServerAliveCountMax 3
EOC
  printf '#!/bin/sh\n# ssh into the test bed hosts (tests/testbed/netns.sh)\nexec /usr/bin/ssh -F %s "$@"\n' \
    "$TB_DIR/ssh_config" > "$TB_DIR/ssh"
  chmod 755 "$TB_DIR/ssh"
  ln -s ../ssh "$TB_DIR/bin/ssh"

  # 5. one sshd per host, in its netns and its own UTS namespace (hostname = h)
  for h in $TB_HOSTS; do
    ip=$(tb_ip "$h")
    cat > "$TB_DIR/sshd_config.$h" <<EOC
ListenAddress $ip:22
HostKey $TB_DIR/ssh_host_ed25519_key
PidFile $TB_DIR/sshd.$h.pid
AuthorizedKeysFile $TB_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
MaxStartups 200:30:400
MaxSessions 200
AcceptEnv $TB_ACCEPT_ENV
Subsystem sftp /usr/lib/openssh/sftp-server
EOC
    if [ "$TB_SSH_SKIP_BASHRC" = 1 ]; then echo "SetEnv SHLVL=1" >> "$TB_DIR/sshd_config.$h"; fi
    ( tb_exec "$h" /usr/sbin/sshd -f "$TB_DIR/sshd_config.$h" ) 8>&-   # fd 8: our lock
  done

  # 6. wait until every sshd answers: its banner over the bridge from the root namespace (cheap),
  # then one full login (key, config) on the first host. (A login costs ~0.3 s of CPU here:
  # the remote shell runs root's ~/.bashrc.)
  local bad="" first=""
  for h in $TB_HOSTS; do
    ip=$(tb_ip "$h"); first=${first:-$h}
    for t in $(seq 100); do
      [ "$(timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/22" && head -c 7 <&3' "$ip" 2>/dev/null)" = SSH-2.0 ] && break
      [ "$t" = 100 ] && bad="$bad $h"
      sleep 0.02
    done
  done
  if [ -n "$bad" ]; then echo "netns.sh: sshd not reachable on:$bad" >&2; return 1; fi
  "$TB_DIR/ssh" -o ConnectTimeout=2 "$first" true || {
    echo "netns.sh: ssh $first (as $TB_DIR/ssh) fails" >&2; return 1; }
}

tb_status() {
  local h rc=0 ns
  [ -d "$TB_DIR" ] || { echo "netns.sh: down ($TB_DIR missing)"; return 1; }
  ip -br addr show dev "$TB_IF" 2>/dev/null || { echo "no $TB_IF"; rc=1; }
  for h in $TB_HOSTS; do
    ns=$(ns_of "$h")
    printf '%s (netns %s, %s pids): ' "$h" "$ns" "$(ip netns pids "$ns" 2>/dev/null | wc -l)"
    "$TB_DIR/ssh" -o ConnectTimeout=2 "$h" "echo \$(hostname) \$(ip -4 -o addr show dev $TB_IF | awk '{print \$4}')" 2>&1 || rc=1
  done
  return $rc
}

tb_env() {
  cat <<EOV
TB_HOSTS='$TB_HOSTS'
TB_NS_PREFIX='$TB_NS_PREFIX'
TB_NET='$TB_NET'
TB_HEAD_NAME='$TB_HEAD_NAME'
TB_HEAD_IP='$TB_HEAD_IP'
TB_BR='$TB_BR'
TB_IF='$TB_IF'
TB_DIR='$TB_DIR'
TB_SSH='$TB_DIR/ssh'
TB_SSH_CONFIG='$TB_DIR/ssh_config'
EOV
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  cmd=${1:-}
  case "$cmd" in
    up|down)
      mkdir -p "$(dirname "$TB_LOCK")"
      exec 8>"$TB_LOCK"; flock -w 60 8 || { echo "netns.sh: $TB_LOCK busy" >&2; exit 1; }
      start=$EPOCHREALTIME
      if [ "$cmd" = up ]; then
        # not `if ! tb_up`: in a condition, set -e would be off inside tb_up
        set +e; ( set -e; tb_up ); rc=$?; set -e
        if [ $rc != 0 ]; then echo "netns.sh: up failed; tearing down" >&2; tb_down; exit 1; fi
      else
        tb_down
      fi
      awk -v a="$start" -v b="$EPOCHREALTIME" -v c="$cmd" 'BEGIN { printf "netns.sh: %s in %.2f s\n", c, b - a }' >&2 ;;
    status) tb_status ;;
    exec) shift; [ $# -ge 2 ] || { echo "usage: $0 exec HOST CMD..." >&2; exit 2; }; tb_exec "$@" ;;
    env) tb_env ;;
    hosts) [ -e "$TB_DIR/$MARK" ] || { echo "netns.sh: not up" >&2; exit 1; }; tb_hosts_add ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
  esac
fi
