"""The no-op task of bench/native_bench.py.

It lives in an importable module so that the packed call refers to it by
reference (module + name), exactly like a Parsl app defined in a user's
module: the workers import this file (native_bench.py puts bench/ on their
PYTHONPATH) instead of unpickling a function body.
"""


def noop():
    return None
