"""Registry (MLflow) access, approvals, gates and model cards."""

# The package's public modules (import them by name; nothing is re-exported here).
__all__ = [
    "approvals",
    "audit_log",
    "figures",
    "gates",
    "intents",
    "model_card",
    "monitoring",
    "publishing",
    "registry",
    "release",
    "rendering",
    "reports",
    "stages",
]
