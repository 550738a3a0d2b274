#!/bin/sh
# The Dagster settings are the image's ($DAGSTER_HOME, outside the shared volume: see the Dockerfile);
# the volume holds the platform home, with Dagster's compute logs and local artefacts in dagster/.
set -e
mkdir -p "$ENSEMBLE_PLATFORM_HOME/dagster"
exec "$@"
