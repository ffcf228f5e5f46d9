"""The two kinds of progress callback edgeseg's long steps take, defined once.

- :data:`Say`: one short line as each step starts (``build``, ``calibrate``,
  ``engine``, plugin builds); the CLI prints them as ``[edgeseg] ...``.
- :data:`Count`: ``(done, total)`` after each item of a loop over frames or
  layers (calibration sets, sensitivity analysis, parity); ``total`` is None
  when it is not known up front.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

Say = Callable[[str], None]
Count = Callable[[int, "int | None"], None]

log = logging.getLogger("edgeseg")


def say_or_log(say: Say | None) -> Say:
    """``say``, or a callback that logs each line at INFO when the caller gave none."""
    return say if say is not None else (lambda message: log.info("%s", message))


__all__ = ["Count", "Say", "say_or_log"]
