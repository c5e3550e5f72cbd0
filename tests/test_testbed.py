"""Smoke tests of the test beds themselves (tests/testbed/, fixtures in testbed_fixtures.py).

- four ssh hosts: each answers ssh with its own hostname and address, and sees the head's
  10.201.0.254 as the peer (the root namespace reaches it on tb0); hosts reach each other and
  the head; nothing inside reaches beyond the test net; a command run "on" a host without ssh
  (exec_argv) gets the host's name and leaves the machine's hostname alone; the ssh wrapper works
  as a plain `ssh` in PATH; link_down cuts a host off and link_up heals it; pids_in sees its sshd;
  a fake agent left in a namespace is found and killed by assert_no_service_left;
- Slurm: 4 idle nodes of 2 CPUs in partition debug; `srun -N2 hostname` runs on n1 and n2 in two
  network namespaces with their own addresses; a step is bound to the CPUs of its grant (nproc 1,
  2 with --exclusive); `sbatch --wrap` completes, `scancel` cancels;
  `qsub` of a `#PBS -l nodes=2` script runs on two nodes (torque wrappers);
- both beds up at once: distinct subnets and bridges, no path from one to the other.

Each bed comes up once per session; its fixture's finalizer takes it down and fails if anything
is left (namespaces, links, tagged /etc/hosts lines, our sshd/slurmd/slurmctld/munged).
"""
from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from testbed_fixtures import (assert_no_service_left, netns_hosts, no_service_left,  # noqa: F401
                              service_processes_in_testbeds, slurm_cluster)

PROBE_TCP = ("timeout 3 bash -c 'exec 3<>/dev/tcp/$0/$1 && head -c 7 <&3' {host} {port}")


def tcp_banner(ip: str, port: int = 22, timeout: float = 2.0, source: str | None = None) -> bytes:
    with socket.create_connection((ip, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as s:
        s.settimeout(timeout)
        return s.recv(7)


# ---------------------------------------------------------------- ssh hosts

def test_each_host_answers_ssh_with_its_own_name_and_address(netns_hosts):
    tb = netns_hosts
    assert tb.names == ["h1", "h2", "h3", "h4"]
    for h in tb.names:
        out = tb.run_on(h, "echo $(hostname) $(ip -4 -o addr show dev tb0 | awk '{print $4}') "
                           "${SSH_CLIENT%% *}").stdout.split()
        assert out == [h, f"{tb.ips[h]}/24", tb.head_ip], out


def test_root_namespace_reaches_every_host_on_tb0(netns_hosts):
    tb = netns_hosts
    for h in tb.names:
        route = subprocess.run(["ip", "-o", "route", "get", tb.ips[h]], capture_output=True,
                               text=True, check=True).stdout
        assert f" dev {tb.head_iface} " in route and f"src {tb.head_ip}" in route, route
        assert socket.gethostbyname(h) == tb.ips[h]
        assert tcp_banner(tb.ips[h], source=tb.head_ip) == b"SSH-2.0"
    assert socket.gethostbyname(tb.head_name) == tb.head_ip


def test_hosts_reach_each_other_and_the_head_and_nothing_else(netns_hosts):
    tb = netns_hosts
    with socket.socket() as srv:                 # a listener of the head, on its test address
        srv.bind((tb.head_ip, 0))
        srv.listen(1)
        srv.settimeout(10)
        port = srv.getsockname()[1]
        cp = tb.run_on("h2", f"{PROBE_TCP.format(host='h4', port=22)}; echo; "
                             f"echo hello >/dev/tcp/{tb.head_name}/{port} && echo sent; "
                             "timeout 3 bash -c 'exec 3<>/dev/tcp/198.51.100.1/22' 2>&1; "
                             "echo rc=$?", check=False)
        conn, peer = srv.accept()
        with conn:
            assert conn.recv(16) == b"hello\n"
    lines = cp.stdout.splitlines()
    assert lines[0] == "SSH-2.0", cp.stdout            # h2 -> h4
    assert lines[1] == "sent", cp.stdout                # h2 -> head
    assert peer[0] == tb.ips["h2"]
    # no default route inside: anything outside 10.201.0.0/24 fails at once, nothing leaves
    assert "Network is unreachable" in cp.stdout and lines[-1] == "rc=1", cp.stdout


def test_exec_argv_runs_on_the_host_without_ssh_and_keeps_the_machine_hostname(netns_hosts):
    tb = netns_hosts
    before = socket.gethostname()
    out = subprocess.run(tb.exec_argv("h3", "sh", "-c", "hostname; ip -4 -o addr show dev tb0"),
                         capture_output=True, text=True, check=True, timeout=10).stdout
    assert out.splitlines()[0] == "h3"
    assert f"inet {tb.ips['h3']}/24" in out
    assert socket.gethostname() == before
    proc = subprocess.Popen(tb.exec_argv("h3", "sleep", "30"))
    try:
        deadline = time.monotonic() + 5
        while proc.pid not in tb.pids_in("h3") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.pid in tb.pids_in("h3")           # the Popen's pid is the command's own
        assert tb.processes_in("h3").get(proc.pid) == "sleep 30"
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in tb.pids_in("h3")


def test_ssh_wrapper_works_as_plain_ssh_in_path(netns_hosts):
    tb = netns_hosts
    out = subprocess.run(["ssh", "h1", "hostname"], env=tb.env_with_ssh(), capture_output=True,
                         text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0 and out.stdout.strip() == "h1", out
    assert tb.ssh_config.exists() and tb.identity.exists()


def test_link_down_cuts_a_host_off_and_link_up_heals_it(netns_hosts):
    tb = netns_hosts
    tb.link_down("h4")
    try:
        assert not tb.link_is_up("h4")
        with pytest.raises(OSError):
            tcp_banner(tb.ips["h4"], timeout=1.0)
        assert tcp_banner(tb.ips["h3"]) == b"SSH-2.0"    # the others are unaffected
    finally:
        tb.link_up("h4")
    deadline = time.monotonic() + 10
    while True:
        try:
            assert tcp_banner(tb.ips["h4"]) == b"SSH-2.0"
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_pids_in_and_the_leftover_check(netns_hosts):
    tb = netns_hosts
    sshd = int((tb.dir / "sshd.h2.pid").read_text())
    assert sshd in tb.pids_in("h2")
    assert service_processes_in_testbeds() == {}
    # a fake agent (argv[0] "dragon-agent") started over ssh, as a launcher would
    tb.run_on("h2", "nohup bash -c 'exec -a dragon-agent sleep 60' >/dev/null 2>&1 &")
    # ssh returns once the job is in the background, maybe before it has exec'd: wait to see it,
    # so that the check below is the one that finds it (on a busy machine it once came later, the
    # check passed, and the leftover failed the next test).
    deadline = time.monotonic() + 10
    while not any(w == "tb-h2: dragon-agent 60" for w in service_processes_in_testbeds().values()):
        assert time.monotonic() < deadline, "the fake agent did not start on h2 within 10 s"
        time.sleep(0.05)
    with pytest.raises(AssertionError, match=r"tb-h2: dragon-agent 60"):
        assert_no_service_left(grace=0.5)
    assert_no_service_left(grace=5)                    # it was killed


# ---------------------------------------------------------------- Slurm

def test_slurm_nodes_are_idle_with_two_cpus(slurm_cluster):
    sc = slurm_cluster
    out = sc.run("sinfo", "-h", "-N", "-o", "%N %T %c %P").stdout.split("\n")
    assert sorted(line for line in out if line) == [f"{n} idle 2 debug*" for n in sc.nodes], out


def test_srun_N2_runs_on_n1_and_n2_in_different_namespaces(slurm_cluster, no_service_left):
    sc = slurm_cluster
    out = sc.run("srun", "-N2", "--ntasks-per-node=1", "-l", "bash", "-c",
                 "echo $(hostname) $SLURMD_NODENAME $(readlink /proc/self/ns/net) "
                 "$(ip -4 -o addr show dev eth0 | awk '{print $4}')", timeout=60).stdout
    rows = sorted(line.split(": ", 1)[1].split() for line in out.splitlines())
    assert [r[0] for r in rows] == ["n1", "n2"] and [r[1] for r in rows] == ["n1", "n2"], out
    assert rows[0][2] != rows[1][2], out                # two network namespaces
    assert rows[0][2] != f"net:[{os.stat('/proc/self/ns/net').st_ino}]"
    assert [r[3] for r in rows] == [f"{sc.ips['n1']}/24", f"{sc.ips['n2']}/24"], out
    # the grant is visible as affinity (task/affinity): 1 CPU by default, the node's 2 exclusive
    for extra, cpus in (([], "1"), (["--exclusive"], "2")):
        out = sc.run("srun", "-N1", *extra, "bash", "-c", "echo $(nproc) $SLURM_CPUS_ON_NODE").stdout
        assert out.split() == [cpus, cpus], (extra, out)
    sc.wait_queue_empty()


def test_sbatch_wrap_runs_and_scancel_cancels(slurm_cluster, tmp_path):
    sc = slurm_cluster
    out = tmp_path / "out.txt"
    jid = sc.run("sbatch", "--parsable", "-N2", "-o", str(out),
                 "--wrap", "echo $(hostname) $SLURM_JOB_NODELIST; srun -l hostname").stdout.strip()
    long = sc.run("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 600").stdout.strip()
    deadline = time.monotonic() + 30
    while sc.job_state(long) != "RUNNING" or sc.job_state(jid) != "COMPLETED":
        assert time.monotonic() < deadline, (sc.job_state(jid), sc.job_state(long), sc.logs())
        time.sleep(0.1)
    lines = out.read_text().splitlines()
    assert lines[0] == "n1 n[1-2]" and sorted(lines[1:]) == ["0: n1", "1: n2"], lines
    sc.run("scancel", long)
    sc.wait_queue_empty()
    assert sc.job_state(long) == "CANCELLED"


def test_qsub_with_pbs_nodes_2_runs_on_two_nodes(slurm_cluster, tmp_path):
    sc = slurm_cluster
    script = tmp_path / "job.pbs"
    script.write_text("#!/bin/bash\n#PBS -N tbsmoke\n#PBS -l nodes=2\n"
                      "echo start $(hostname) $SLURM_JOB_NODELIST $SLURM_JOB_NUM_NODES\n"
                      "srun -l hostname\n")
    jid = sc.run("qsub", str(script), cwd=tmp_path).stdout.strip()
    assert jid.isdigit(), jid                           # the wrapper prints the bare Slurm id
    sc.wait_queue_empty()
    assert sc.job_state(jid) == "COMPLETED", sc.logs()
    lines = (tmp_path / f"job.pbs.o{jid}").read_text().splitlines()
    assert lines[0] == "start n1 n[1-2] 2" and sorted(lines[1:]) == ["0: n1", "1: n2"], lines
    assert "tbsmoke" in sc.run("qstat", jid).stdout


# ---------------------------------------------------------------- both at once

def test_both_beds_coexist_without_a_path_between_them(netns_hosts, slurm_cluster):
    tb, sc = netns_hosts, slurm_cluster
    hosts = open("/etc/hosts").read()
    for h in tb.names:
        assert f"{tb.ips[h]} {h} # dragon-tests netns" in hosts
    for n in sc.nodes:
        assert f"{sc.ips[n]} {n} # dragon-tests slurm" in hosts
    # a Slurm node reaches the controller but not the ssh hosts (no route, no forwarding)
    out = sc.run("srun", "-N1", "-w", "n1", "bash", "-c",
                 f"{PROBE_TCP.format(host=tb.ips['h1'], port=22)} 2>&1; echo rc=$?",
                 check=False).stdout
    assert "Network is unreachable" in out and out.strip().endswith("rc=1"), out
    # an ssh host does not reach the Slurm net
    out = tb.run_on("h1", f"{PROBE_TCP.format(host=sc.controller_ip, port=16817)} 2>&1; echo rc=$?",
                    check=False).stdout
    assert "Network is unreachable" in out, out
    sc.wait_queue_empty()
