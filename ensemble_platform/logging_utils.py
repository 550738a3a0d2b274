"""A minimal progress-log protocol: Dagster's `context.log` and `logging.Logger` both satisfy it,
so the core reports progress without importing Dagster."""

from __future__ import annotations

import logging
from typing import Protocol


class ProgressLog(Protocol):
    def info(self, msg: str, *args: object) -> None: ...


null_log: ProgressLog = logging.getLogger("ensemble_platform")
