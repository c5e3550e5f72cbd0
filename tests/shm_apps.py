"""Parsl apps and inputs shared by the shared-memory data path tests (test_shm_data_path.py for
shm_path="files", test_shm_pool_path.py for the pool). A module of tests/, which the workers
import by name (worker_pythonpath)."""
from __future__ import annotations

import os
import signal

import numpy as np
from parsl import python_app

SIDE = 512  # 512x512 float64: 2 MiB, as in the image benchmark


def image(i: int) -> np.ndarray:
    return np.random.default_rng(i).random((SIDE, SIDE))


@python_app
def scaled(img, factor):
    return img * factor


@python_app
def mutate_in_place_and_sum(img):
    img += 1.0  # allowed; the client's array is untouched either way
    img[0, 0] = -1.0
    return float(img.sum())


@python_app
def echo(x):
    return x


@python_app
def fail_with_large_argument(img):
    raise ValueError(f"bad image of shape {img.shape}")


@python_app
def die_holding(img):
    os.kill(os.getpid(), signal.SIGKILL)
