"""What the command-line entry points share: bad input reported as one clear line."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException

from dfn.errors import InputError


def config_node(error: InstantiationException) -> str | None:
    """The config node whose object Hydra failed to build, e.g. ``model.predictor.filtering``.

    Hydra 1.3 has no attribute for it: the node ends the exception's message, after
    ``full_key:``. tests/test_frameworks.py fails if a Hydra release changes that.
    """
    _, found, key = str(error).rpartition("\nfull_key: ")
    return key.strip() if found else None


def user_error(error: BaseException) -> tuple[Exception, str | None] | None:
    """The user's mistake behind ``error`` and the config node it came from; None for a bug.

    An InputError anywhere in the chain is one, and so is a ValueError that a constructor
    raised while Hydra built it from the config (an op or layer rejecting its options).
    """
    cause, node, built = error, None, False
    while cause is not None:
        if isinstance(cause, InputError) or (built and isinstance(cause, ValueError)):
            return cause, node
        built = isinstance(cause, InstantiationException)
        if built:
            node = config_node(cause) or node
        cause = cause.__cause__
    return None


@contextmanager
def reporting_user_errors() -> Iterator[None]:
    """Report a user error as one line on stderr, exit code 1 (HYDRA_FULL_ERROR=1: traceback)."""
    try:
        yield
    except Exception as e:
        found = user_error(e)
        if found is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        cause, node = found
        where = f"{node}: " if node and f"{node}." not in str(cause) else ""
        print(f"error: {where}{cause}", file=sys.stderr)
        raise SystemExit(1) from None
