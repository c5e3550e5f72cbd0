"""The shared-memory data path end to end: real dragond, dragon-agent and Python
workers, a Parsl DataFlowKernel with DragonExecutor. Large numpy arguments and
results travel through files of the executor's directory (asserted through
its counters), the directory is empty once results are in and gone after
shutdown; in-place mutation, mixed sizes, app exceptions, a worker killed
mid-task and shm_threshold=0. Envelope details and failure paths without
binaries: test_shm_unit.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback

import numpy as np
import parsl
import pytest
from parsl import python_app

from conftest import head_and_dfk, load_parsl, wait_for
from shm_apps import die_holding, echo, fail_with_large_argument, image, mutate_in_place_and_sum, scaled
from dragon_parsl import WorkerLost

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def shm_base():
    """A base directory of our own under /dev/shm, so the tests see only their executors' directories."""
    base = f"/dev/shm/dragon-test-{os.getpid()}-{time.monotonic_ns()}"
    os.mkdir(base)
    yield base
    for root, dirs, files in os.walk(base, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(base)


@pytest.fixture
def shm_dfk(worker_pythonpath, tmp_path, shm_base):
    """A head with 2 workers on this host and a DFK whose executor uses shm under shm_base."""
    with head_and_dfk(tmp_path, shm_dir=shm_base, shm_path="files", wait_for_agent=True) as (dfk, executor, _):
        yield dfk, executor


def test_large_argument_and_result_round_trip_through_shm(shm_dfk):
    dfk, executor = shm_dfk
    shm_dir = executor.shm.path
    assert os.path.isdir(shm_dir) and os.path.dirname(shm_dir) == executor.shm_dir
    imgs = [image(i) for i in range(6)]
    results = [f.result(timeout=60) for f in [scaled(img, 3.0) for img in imgs]]
    for img, r in zip(imgs, results):
        assert r.shape == img.shape and r.dtype == img.dtype and np.array_equal(r, img * 3.0)
    c = executor.shm_counters()
    assert c["args_shm_tasks"] == 6 and c["results_shm"] == 6 and c["args_fallbacks"] == 0
    assert c["args_shm_bytes"] >= 6 * img.nbytes and c["results_shm_bytes"] >= 6 * img.nbytes
    assert executor.shm.data_files() == []  # argument files deleted with the result, result files once mapped
    dfk.cleanup()
    parsl.clear()
    assert not os.path.exists(shm_dir)


def test_embedded_head_uses_shm_and_removes_its_directory(worker_pythonpath, tmp_path, shm_base):
    dfk, executor = load_parsl(tmp_path, workers_per_node=1, shm_dir=shm_base, shm_path="files")
    try:
        shm_dir = executor.shm.path
        img = image(1)
        assert np.array_equal(scaled(img, 2.0).result(timeout=60), img * 2.0)
        assert executor.shm_counters()["args_shm_tasks"] == 1 and executor.shm_counters()["results_shm"] == 1
    finally:
        dfk.cleanup()
        parsl.clear()
    assert not os.path.exists(shm_dir) and os.listdir(shm_base) == []


def test_app_may_mutate_its_argument_in_place(shm_dfk):
    dfk, executor = shm_dfk
    img = image(2)
    before = img.copy()
    total = mutate_in_place_and_sum(img).result(timeout=60)
    expected = before + 1.0
    expected[0, 0] = -1.0
    assert total == pytest.approx(float(expected.sum()))
    assert np.array_equal(img, before)  # the client's array is untouched
    assert executor.shm_counters()["args_shm_tasks"] == 1


def test_mixed_small_and_large_tasks(shm_dfk):
    dfk, executor = shm_dfk
    inputs = [image(i) if i % 2 else i for i in range(20)]
    outputs = [f.result(timeout=60) for f in [echo(x) for x in inputs]]
    for x, y in zip(inputs, outputs):
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y)
        else:
            assert x == y
    c = executor.shm_counters()
    assert c["args_shm_tasks"] == 10 and c["results_shm"] == 10
    assert c["args_inline_tasks"] == 10 and c["results_inline"] == 10
    assert executor.shm.data_files() == []


def test_app_exception_with_a_large_argument(shm_dfk):
    dfk, executor = shm_dfk
    with pytest.raises(ValueError, match=r"bad image of shape \(512, 512\)") as info:
        fail_with_large_argument(image(3)).result(timeout=60)
    text = "".join(traceback.format_exception(info.value))
    assert "fail_with_large_argument" in text, text  # the remote frame came back
    assert executor.shm_counters()["args_shm_tasks"] == 1
    assert executor.shm.data_files() == []
    # the workers keep working
    assert np.array_equal(scaled(image(4), 1.0).result(timeout=60), image(4))


def test_worker_killed_mid_task_with_a_large_argument(shm_dfk):
    dfk, executor = shm_dfk
    with pytest.raises(WorkerLost) as info:
        die_holding(image(5)).result(timeout=60)
    assert "SIGKILL" in str(info.value) or "signal 9" in str(info.value)
    assert executor.shm_counters()["args_shm_tasks"] == 1
    assert executor.shm.data_files() == []  # its argument file went with the failure
    assert np.array_equal(scaled(image(6), 2.0).result(timeout=60), image(6) * 2.0)  # the replacement works
    assert executor.shm.data_files() == []


def test_threshold_zero_sends_everything_through_grpc(worker_pythonpath, tmp_path, shm_base):
    with head_and_dfk(tmp_path, shm_dir=shm_base, shm_path="files", shm_threshold=0,
                      wait_for_agent=True) as (dfk, executor, _):
        assert executor.shm is None and executor.shm_counters() == {"dir": None}
        img = image(7)
        assert np.array_equal(scaled(img, 2.0).result(timeout=60), img * 2.0)
        assert os.listdir(shm_base) == []  # no directory was ever made


@python_app
def length(data):
    return len(data)


def test_large_arguments_through_shm_are_not_bound_by_the_heads_payload_limit(worker_pythonpath, tmp_path,
                                                                               shm_base):
    with head_and_dfk(tmp_path, ["--workers", "1", "--max-payload-mb", "1"],
                      shm_dir=shm_base, shm_path="files", wait_for_agent=True) as (dfk, executor, _):
        assert length(b"x" * (2 << 20)).result(timeout=60) == 2 << 20  # a long bytes object: in-band, in the file
        assert executor.shm_counters()["args_shm_tasks"] == 1


KILLED_CLIENT = """
import os, sys, time
import numpy as np
from dragon_parsl import DragonExecutor

def slow_sum(a):
    import time
    time.sleep(60)
    return a.sum()

ex = DragonExecutor(workers_per_node=1, shm_dir=sys.argv[1], shm_path="files", head_run_dir=sys.argv[2])
ex.start()
ex.submit(slow_sum, {}, np.ones(1 << 18))
print(ex.shm.path, flush=True)
time.sleep(120)
"""


def test_directory_of_a_killed_client_is_swept_by_the_next_executor(worker_pythonpath, tmp_path, shm_base):
    client = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, shm_base, str(tmp_path / "killed-head")],
                              stdout=subprocess.PIPE, text=True)
    try:
        left_behind = client.stdout.readline().strip()
        assert left_behind.startswith(shm_base + "/dragon-"), left_behind
        wait_for(lambda: os.listdir(left_behind), 30, "the argument file to be written")
    finally:
        client.kill()  # SIGKILL: no shutdown, the directory stays
        client.wait()
    assert os.path.isdir(left_behind)
    dfk, executor = load_parsl(tmp_path, workers_per_node=1, shm_dir=shm_base, shm_path="files")
    try:
        assert left_behind in executor.shm.swept and not os.path.exists(left_behind)
        assert os.listdir(shm_base) == [os.path.basename(executor.shm.path)]
    finally:
        dfk.cleanup()
        parsl.clear()
