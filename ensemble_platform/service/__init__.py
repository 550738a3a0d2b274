"""The decision service: an HTTP API (FastAPI) over `serving.decider.Decider` that records every decision
durably in the keyed decision log before answering, with bearer-token scopes and Prometheus metrics.

The names below are imported on first use (PEP 562): the command line imports this package's
argument and sub-command modules for every command, and importing the app with it (FastAPI, the
decider, scikit-learn, skops) cost every `ensemble-platform` command ~1.4 s before it parsed its
arguments, `--help` included."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DecisionLog": "ensemble_platform.decisions.log",
    "DisabledDecisionLog": "ensemble_platform.decisions.log",
    "decision_log_path": "ensemble_platform.decisions.log",
    "create_app": "ensemble_platform.service.app",
    "ReplayError": "ensemble_platform.service.replay",
    "ReplayResult": "ensemble_platform.service.replay",
    "replay_record": "ensemble_platform.service.replay",
    "ServerThread": "ensemble_platform.service.runner",
    "load_verified_bundle": "ensemble_platform.service.runner",
    "serve": "ensemble_platform.service.runner",
    "SCOPES": "ensemble_platform.service.tokens",
    "TokenError": "ensemble_platform.service.tokens",
    "TokenInfo": "ensemble_platform.service.tokens",
    "TokenStore": "ensemble_platform.service.tokens",
}

__all__ = [
    "SCOPES",
    "DecisionLog",
    "DisabledDecisionLog",
    "ReplayError",
    "ReplayResult",
    "ServerThread",
    "TokenError",
    "TokenInfo",
    "TokenStore",
    "create_app",
    "decision_log_path",
    "load_verified_bundle",
    "replay_record",
    "serve",
]

if TYPE_CHECKING:
    from ensemble_platform.decisions.log import DecisionLog, DisabledDecisionLog, decision_log_path
    from ensemble_platform.service.app import create_app
    from ensemble_platform.service.replay import ReplayError, ReplayResult, replay_record
    from ensemble_platform.service.runner import ServerThread, load_verified_bundle, serve
    from ensemble_platform.service.tokens import SCOPES, TokenError, TokenInfo, TokenStore


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
