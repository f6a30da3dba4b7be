"""What the ``reid.train`` / ``reid.test`` commands do with an error: a user's mistake or the
environment's (bad value, missing data, unusable checkpoint, full disk) is one line on stderr
and exit status 1, never a traceback; a non-finite loss is exit status 2."""
from __future__ import annotations

import sys
from typing import Callable

from . import distributed as du
from .checkpoint import CheckpointError
from .config import ConfigError
from .fileio import FileWriteError
from .trainer import NonFiniteLossError, OutputWriteError

__all__ = ["USER_ERRORS", "run_command"]

USER_ERRORS = (ConfigError, CheckpointError, OutputWriteError, FileWriteError, ValueError, FileNotFoundError)


def run_command(body: Callable[[], object]) -> int:
    """``body()`` then 0; an expected error's message and 1 (2 for a non-finite loss)."""
    try:
        body()
        # Every rank ends together: the others wait for rank 0's plots, then all tear the
        # process group down at once (one rank destroying it while its peer still ran was
        # seen aborting in gloo's teardown, once, in a loaded test run).
        du.barrier()
        return 0
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        du.cleanup()
