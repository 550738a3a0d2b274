"""Feature schema inferred from the data: which columns are numeric, which categorical."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.errors import DataError


@dataclass(frozen=True)
class FeatureSchema:
    """The model inputs: numeric and categorical feature columns, and categories seen."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sensitive: tuple[str, ...] = ()

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSchema:
        return cls(tuple(data["numeric"]), tuple(data["categorical"]),
                   {k: tuple(v) for k, v in data["categories"].items()}, tuple(data.get("sensitive", ())))


def feature_columns(table: pd.DataFrame, spec: DatasetSpec) -> list[str]:
    excluded = {spec.target, *spec.drop}
    if not spec.use_sensitive_as_features:
        excluded |= set(spec.sensitive)
    return [c for c in table.columns if c not in excluded]


def infer_schema(table: pd.DataFrame, spec: DatasetSpec) -> FeatureSchema:
    numeric: list[str] = []
    categorical: list[str] = []
    for column in feature_columns(table, spec):
        declared_categorical = column in spec.categorical
        is_number = pd.api.types.is_numeric_dtype(table[column]) and not pd.api.types.is_bool_dtype(
            table[column]
        )
        if column in spec.numeric or (is_number and not declared_categorical):
            numeric.append(column)
        else:
            categorical.append(column)
    categories = {
        c: tuple(sorted(map(str, table[c].dropna().unique()))) for c in categorical
    }
    return FeatureSchema(tuple(numeric), tuple(categorical), categories, tuple(spec.sensitive))


def as_model_input(table: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Feature columns with categoricals as text, so every member sees the same encoding input."""
    frame = table[schema.features].copy()
    for column in schema.categorical:
        frame[column] = frame[column].astype("object").where(frame[column].notna(), None)
        frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    for column in schema.numeric:
        frame[column] = numeric_column(frame[column])
        _refuse_non_finite(frame[column])
    return frame


# Tree members compute in float32: a magnitude past its range overflows to infinity inside them.
_LARGEST_USABLE = float(np.finfo(np.float32).max)


def _refuse_non_finite(values: pd.Series) -> None:
    bad = values.notna() & ~(values.abs() <= _LARGEST_USABLE)
    if bad.any():
        rows = list(values.index[bad.to_numpy()][:5])
        raise DataError(f"column {values.name!r} has {int(bad.sum())} infinite or out-of-range value(s) "
                        f"(|x| > {_LARGEST_USABLE:.3g}) in row(s) {rows}; send a finite number or leave it missing")


def numeric_column(values: pd.Series, expectation: str = "must be numeric") -> pd.Series:
    """The column as float64 (missing stays missing); a value that is not a number is an error
    naming the column, never a silent NaN."""
    parsed = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = values[parsed.isna() & values.notna()]
    if len(bad):
        raise DataError(
            f"column {values.name!r} {expectation} but has {len(bad)} unparseable value(s), "
            f"e.g. {sorted(map(str, bad.unique()))[:5]}"
        )
    return parsed
