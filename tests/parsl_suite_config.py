"""Config module for Parsl's own test suite (``pytest PARSL_TESTS --config THIS_FILE``).

Parsl's conftest imports this module more than once: the executor is only
built inside fresh_config(). The executor starts its own private dragond
(embedded default: no address, $DRAGON_HEAD unset by run_parsl_suite.sh),
found through $DRAGON_BIN_DIR.
"""
from parsl.config import Config


def fresh_config() -> Config:
    from dragon_parsl import DragonExecutor

    return Config(executors=[DragonExecutor(label="dragon", workers_per_node=2)])
