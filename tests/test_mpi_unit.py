"""dragon_parsl.mpi without binaries: Policy and the app's tuple checked with errors naming the
field, the request built from them, @mpi_app on an executor that is not a DragonExecutor."""
from __future__ import annotations

import pytest

from dragon_parsl import MpiJob, Policy, mpi_app
from dragon_parsl.mpi import MpiApp, MpiLaunch, job_spec, launch_of, request_of


def test_policy_checks_its_fields():
    assert Policy().hosts is None
    assert Policy(hosts="h1,h2").hosts == ("h1", "h2")
    assert Policy(hosts=["h1"], ranks_per_node=2, oversubscribe=True).ranks_per_node == 2
    for bad in (dict(hosts=[]), dict(hosts=[""]), dict(hosts=[3]), dict(ranks_per_node=0),
                dict(ranks_per_node=1.5), dict(ranks_per_node=True), dict(oversubscribe="yes")):
        with pytest.raises(ValueError, match="Policy"):
            Policy(**bad)


def test_the_apps_tuple_is_checked_naming_the_field(tmp_path):
    s = job_spec(("/bin/prog", str(tmp_path), Policy(ranks_per_node=2), 4, [1, "x"]), "f")
    assert (s.exe, s.run_dir, s.num_ranks, s.mpi_args) == ("/bin/prog", str(tmp_path), 4, ["1", "x"])
    assert job_spec(("prog", None, None, 1, None), "f").run_dir  # None: the current directory
    cases = [
        ("not a tuple", TypeError, "must return"),
        (("a", "b", None, 1), TypeError, "must return"),
        (("", ".", None, 1, []), TypeError, "exe"),
        (("p", 5, None, 1, []), TypeError, "run_dir"),
        (("p", ".", "policy", 1, []), TypeError, "policy"),
        (("p", ".", None, 0, []), ValueError, "num_ranks"),
        (("p", ".", None, True, []), ValueError, "num_ranks"),
        (("p", ".", None, 2, "a b"), TypeError, "mpi_args"),
    ]
    for value, exc, word in cases:
        with pytest.raises(exc, match=word):
            job_spec(value, "f")


def test_request_of_policy():
    r = request_of(job_spec(("p", ".", Policy(hosts=["h1", "h2"], ranks_per_node=3, oversubscribe=True), 6, []),
                            "f"), "-genv X 1")
    assert (r.ranks, r.ranks_per_node, list(r.hosts), r.oversubscribe, r.launcher_options) == \
        (6, 3, ["h1", "h2"], True, "-genv X 1")
    r = request_of(job_spec(("p", ".", None, 2, []), "f"))
    assert (r.ranks, r.ranks_per_node, list(r.hosts), r.oversubscribe) == (2, 0, [], False)


def test_mpi_app_wraps_the_function():
    @mpi_app
    def f(n, bias=1):
        return "p", None, None, n, [bias]
    assert isinstance(f, MpiApp)
    assert isinstance(f.func, MpiLaunch) and f.func.dragon_mpi_launch
    assert launch_of(f.func) is f.func and launch_of(lambda: 1) is None
    # On any other executor the launch is called as a plain function: it says why it cannot run.
    with pytest.raises(TypeError, match="not a DragonExecutor"):
        f.func(2)
    assert f.func.func(2) == ("p", None, None, 2, [1])


def test_job_keys():
    job = MpiJob.__new__(MpiJob)
    job.stdin, job.stdout = "in", "out"
    assert job["in"] == "in" and job["out"] == "out"
    with pytest.raises(KeyError, match="'in'"):
        job["err"]
