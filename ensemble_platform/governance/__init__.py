"""Registry (MLflow) access, approvals, gates and model cards."""

# The package's public modules (import them by name; nothing is re-exported here).
__all__ = [
    "approvals",
    "approving",
    "audit_log",
    "figures",
    "gates",
    "intents",
    "model_card",
    "monitoring",
    "promotion",
    "publishing",
    "registry",
    "registry_connection",
    "registry_downloads",
    "registry_stages",
    "release",
    "release_bundle",
    "release_status",
    "rendering",
    "reports",
    "stages",
    "version_record",
]
