"""Registry (MLflow) access, approvals, gates and model cards."""
