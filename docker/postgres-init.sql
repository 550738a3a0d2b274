-- The MLflow tracking server's database beside Dagster's (POSTGRES_DB creates `dagster`).
CREATE DATABASE mlflow;
