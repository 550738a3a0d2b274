"""The decision log and what is read from it: the records the decision service writes, the keyed store
they live in, the human review queue and its SLA."""

from ensemble_platform.decisions.log import DecisionLog, DecisionLogLike, DisabledDecisionLog, decision_log_path

__all__ = ["DecisionLog", "DecisionLogLike", "DisabledDecisionLog", "decision_log_path"]
