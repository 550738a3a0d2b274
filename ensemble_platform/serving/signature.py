"""MLflow signature of the registered ensemble and of its serving bundle: the columns an operator must
send, typed from the training schema.

Numeric features are `double`, categorical features `string`; every column is required by name (the
runtime refuses a row set without it) and every value may be missing (null in JSON, an empty CSV
cell: each member imputes). The types are what `mlflow models serve` parses a request into: a CSV body
(`text/csv`) is read with these dtypes, and a JSON value that is not a number in a numeric column is
refused by MLflow naming the column ("Failed to convert column Amount to type 'float64'") before the
model runs. In Python, `pyfunc.predict` applies MLflow's own rules: a numeric column must arrive as
floats (MLflow refuses int64 -> double; `rows.astype({c: float ...})`), a categorical as text.
"""

from __future__ import annotations

import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import ColSpec, DataType, Schema, TensorSpec

from ensemble_platform.data.schema import FeatureSchema


def input_signature(schema: FeatureSchema) -> Schema:
    """One column per feature, in the runtime's order: numeric as double, categorical as string."""
    columns: list[ColSpec | TensorSpec] = [ColSpec(DataType.double, name=column) for column in schema.numeric]
    columns += [ColSpec(DataType.string, name=column) for column in schema.categorical]
    return Schema(columns)


def ensemble_signature(schema: FeatureSchema, output_example: pd.DataFrame) -> ModelSignature:
    return ModelSignature(inputs=input_signature(schema), outputs=infer_signature(output_example).inputs)
