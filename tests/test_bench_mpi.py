"""Smoke test of bench/mpi_bench.py (2-rank MPI job launches: plain mpiexec loop, @mpi_app,
bash_app with $PARSL_MPI_PREFIX, Parsl's MPIExecutor) on a few jobs: structure and that every
method measured something, never speed (benchmarks are not timed tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import BIN_DIR, REPO

import mpi_programs


@pytest.mark.timeout(300)
def test_mpi_bench_quick(tmp_path):
    out = tmp_path / "mpi.json"
    env = dict(os.environ, DRAGON_BIN_DIR=str(BIN_DIR))
    env.pop("DRAGON_HEAD", None)
    cp = subprocess.run([sys.executable, str(REPO / "bench" / "mpi_bench.py"), "--quick", "--jobs", "5",
                         "--json-out", str(out)], env=env, capture_output=True, text=True, timeout=280,
                        cwd=str(REPO))
    assert cp.returncode == 0, f"exit {cp.returncode}\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}"
    res = json.loads(out.read_text())
    assert json.loads(cp.stdout.strip().splitlines()[-1]) == res
    assert res["errors"] == [] and res["ranks"] == 2 and res["concurrency"] == [1]
    s = res["summary"]["1"]
    assert set(s) == {"plain", "mpi_app", "bash_app", "mpiexecutor"}
    for m, row in s.items():
        assert row["launches_per_s"] > 0 and row["first_output_ms"] > 0 and row["job_ms"] > 0, (m, row)
    assert len([r for r in res["runs"] if r["method"] == "mpi_app"][0]["first_output_ms"]) == 5
    assert {t["target"].split(":")[0] for t in res["targets"]} == {"mpi_app", "bash_app"}
    assert all(t["status"] in ("PASS", "MISS") for t in res["targets"])
    assert "| 1 | mpi_app |" in res["table_md"]
    mpi_programs.assert_no_mpi_left()
