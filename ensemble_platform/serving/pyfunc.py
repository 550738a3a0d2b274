"""The one MLflow pyfunc of the platform: rows in, scores out (probability, decision, agreement,
needs_review per row), wrapping an `EnsembleRuntime`.

Two loader hooks build it: this module's `_load_pyfunc` for the registered `<dataset>.ensemble`
versions (our own registry), and `serving.bundle._load_pyfunc` for serving bundles, which verifies
every hash first. Neither bundle nor registry artefact names any code of its own.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ensemble_platform.ensemble.runtime import EnsembleRuntime

LOADER_MODULE = __name__
# Where MLflow places a loader module's data_path inside a model directory.
DATA_PATH = Path("data") / "ensemble"


class RuntimePyfunc:
    """What `mlflow.pyfunc.load_model` wraps."""

    def __init__(self, runtime: EnsembleRuntime):
        self.runtime = runtime

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.runtime.score(model_input)


def _load_pyfunc(data_path: str) -> RuntimePyfunc:
    """MLflow's loader hook for registered ensemble versions: `data_path` is `<model>/data/ensemble`."""
    return RuntimePyfunc(EnsembleRuntime.load(Path(data_path)))
