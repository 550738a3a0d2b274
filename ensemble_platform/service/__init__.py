"""The decision service: an HTTP API (FastAPI) over `serving.decider.Decider` that records every decision
durably in the keyed decision log before answering, with bearer-token scopes and Prometheus metrics."""

from ensemble_platform.decisions.log import DecisionLog, DisabledDecisionLog, decision_log_path
from ensemble_platform.service.app import create_app
from ensemble_platform.service.replay import ReplayError, ReplayResult, replay_record
from ensemble_platform.service.runner import ServerThread, load_verified_bundle, serve
from ensemble_platform.service.tokens import SCOPES, TokenError, TokenInfo, TokenStore

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
