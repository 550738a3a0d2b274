"""MLflow pyfunc wrapper of the EnsembleRuntime (registered as `<dataset>.ensemble`)."""

from __future__ import annotations

import cloudpickle
import mlflow.pyfunc
import pandas as pd

RUNTIME_ARTIFACT = "runtime"


class EnsemblePyfunc(mlflow.pyfunc.PythonModel):
    """`predict` returns probability, decision, agreement and needs_review per row."""

    def load_context(self, context) -> None:
        with open(context.artifacts[RUNTIME_ARTIFACT], "rb") as handle:
            self.runtime = cloudpickle.load(handle)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.runtime.score(model_input)
