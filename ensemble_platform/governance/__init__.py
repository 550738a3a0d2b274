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
    "registry_connection",
    "registry_downloads",
    "registry_stages",
    "release",
    "rendering",
    "reports",
    "stages",
]
