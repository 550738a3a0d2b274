-- The MLflow tracking server's database beside Dagster's (POSTGRES_DB creates `dagster`).
CREATE DATABASE mlflow;
-- The decision log (ENSEMBLE_PLATFORM_DECISION_STORE): one table per store, a signed checkpoint row each.
CREATE DATABASE decisions;
