"""MLflow signature of the registered ensemble: the columns an operator must send.

Columns are required by name but typed `AnyType`: rows arrive with integer columns, floats with
missing values or numeric-coded categories, and no single MLflow column type accepts all of these
(MLflow refuses int64 -> double). The runtime coerces each column and names any value it cannot
use, so type checking stays in one place.
"""

from __future__ import annotations

import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import AnyType, ColSpec, Schema

from ensemble_platform.data.schema import FeatureSchema


def ensemble_signature(schema: FeatureSchema, output_example: pd.DataFrame) -> ModelSignature:
    inputs = Schema([ColSpec(AnyType(), name=column) for column in schema.features])
    return ModelSignature(inputs=inputs, outputs=infer_signature(output_example).inputs)
