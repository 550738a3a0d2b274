#!/bin/sh
# The platform's Dagster home is $ENSEMBLE_PLATFORM_HOME/dagster (the CLI opens the instance there):
# put the deployment's instance config into it before any role starts.
set -e
mkdir -p "$DAGSTER_HOME"
cp /opt/ensemble_platform/docker/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
exec "$@"
