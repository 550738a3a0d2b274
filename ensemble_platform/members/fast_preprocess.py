"""Fitted preprocessing applied directly, for small inputs: the same bits as the fitted
`ColumnTransformer`, without its per-call overheads.

Why go around scikit-learn here: for one row, `ColumnTransformer.transform` spends ~3 ms per member
on work that does not depend on the row (pandas column selection per part, `check_array` and
feature-name validation in every step, narwhals/pandas wrapping), while the arithmetic itself is a
handful of float operations (issue 18: ColumnTransformer 20 ms of a 50 ms six-member decision).
This module reads the fitted attributes once (at load) and applies them with numpy:

  SimpleImputer (numeric, NaN as missing)   NaN -> `statistics_` (+ `indicator_.features_` flags)
  MissingIndicator                          NaN flags of `features_` (bool, as scikit-learn returns)
  StandardScaler                            `(x - mean_) / scale_`, the operations it does in place
  FunctionTransformer without a function    the ColumnTransformer's "passthrough": the values as they are
  any other elementwise step after the      its own `transform` on the numpy array it was fitted on
  first (SplineTransformer)
  SimpleImputer (constant / most frequent)  categorical parts: a lookup table per column, value ->
  + OneHotEncoder / OrdinalEncoder          output cells, built at load by the fitted part's own
                                            `transform` of every known category, missing (None and
                                            NaN) and an unseen value: each column is encoded on its
                                            own, so a row's cells are the concatenation of its values'
                                            table entries. Any other value type falls back.

The ColumnTransformer's output is `np.hstack` of its parts in `transformers_` order, as scikit-learn
does, so dtypes promote the same way (a MissingIndicator's bools become 1.0/0.0 beside floats).
Anything not recognised (another step, sparse output, an encoder dropping columns, a column that is
not numeric where numbers are expected) compiles to None or raises `Unsupported` at call time, and
the caller uses scikit-learn's own path. Nothing here runs code from a stored model: the fitted
attributes are read, and the probe calls scikit-learn's own transform of the fitted part.

Parts are keyed by a digest of their fitted state and columns (`safe_format`'s canonical bytes):
members holding an identical fitted part (the random forest and XGBoost share their ordinal
encoding of the categoricals) compute it once per batch (`transform(X, cache)`).
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

from ensemble_platform import safe_format

# Probe value standing for "a category never seen in training" (any unseen text encodes the same way).
_UNSEEN_PROBE = "\x00ensemble-platform-unseen-category\x00"
_ENCODERS = (OneHotEncoder, OrdinalEncoder)
Step = Callable[[np.ndarray], np.ndarray]


class Unsupported(Exception):
    """The input is not one the compiled path reproduces exactly: use scikit-learn's own path."""


def part_digest(transformer: Any, columns: list[str]) -> str:
    """Digest of a fitted ColumnTransformer part and the columns it reads (equal digests: equal outputs)."""
    digest = hashlib.sha256(safe_format.dumps(transformer))
    digest.update(repr(list(columns)).encode())
    return digest.hexdigest()


def _steps(transformer: Any) -> list[Any]:
    return [step for _, step in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]


# --- numeric parts ------------------------------------------------------------------------------

def _imputer(step: SimpleImputer) -> Step | None:
    statistics = np.asarray(step.statistics_)
    if (statistics.dtype.kind != "f" or not np.all(np.isfinite(statistics))
            or not (isinstance(step.missing_values, float) and math.isnan(step.missing_values))):
        return None  # dropped all-missing columns, or another missing marker: not reproduced here
    flagged = None
    if step.add_indicator:
        indicator = step.indicator_
        if getattr(indicator, "error_on_new", False):
            return None
        flagged = np.asarray(indicator.features_, dtype=int)

    def impute(values: np.ndarray) -> np.ndarray:
        missing = np.isnan(values)
        imputed = np.where(missing, statistics, values)
        return imputed if flagged is None else np.hstack((imputed, missing[:, flagged]))
    return impute


def _missing_indicator(step: MissingIndicator) -> Step | None:
    if step.error_on_new or not (isinstance(step.missing_values, float) and math.isnan(step.missing_values)):
        return None
    features = np.asarray(step.features_, dtype=int)
    return lambda values: np.isnan(values)[:, features]


def _scaler(step: StandardScaler) -> Step:
    mean = step.mean_ if step.with_mean else None
    scale = step.scale_ if step.with_std else None

    def scaled(values: np.ndarray) -> np.ndarray:
        out = values - mean if mean is not None else values.copy()
        if scale is not None:
            out /= scale
        return out
    return scaled


def _numeric_step(step: Any, first: bool) -> Step | None:
    if isinstance(step, SimpleImputer):
        return _imputer(step)
    if isinstance(step, MissingIndicator):
        return _missing_indicator(step)
    if isinstance(step, StandardScaler):
        return _scaler(step)
    if isinstance(step, FunctionTransformer) and step.func is None:
        return lambda values: values
    if not first and not hasattr(step, "feature_names_in_") and type(step).__name__ == "SplineTransformer":
        # Fitted on the numpy array the step before it returned: its own transform of the same array.
        return lambda values: np.asarray(step.transform(values))
    return None


def _numeric_part(transformer: Any) -> Step | None:
    functions = [_numeric_step(step, first=i == 0) for i, step in enumerate(_steps(transformer))]
    if any(f is None for f in functions):
        return None

    def run(values: np.ndarray) -> np.ndarray:
        for function in functions:
            values = function(values)  # type: ignore[misc]
        return values
    return run


# --- categorical parts --------------------------------------------------------------------------

def _categorical_part(transformer: Any, columns: list[str]) -> Step | None:
    steps = _steps(transformer)
    encoder = steps[-1]
    if (not isinstance(encoder, _ENCODERS) or any(not isinstance(s, SimpleImputer) for s in steps[:-1])
            or getattr(encoder, "drop", None) is not None or getattr(encoder, "sparse_output", False)
            or (isinstance(encoder, OneHotEncoder) and encoder.handle_unknown == "error")
            or (isinstance(encoder, OrdinalEncoder) and encoder.handle_unknown == "error")
            or len(encoder.categories_) != len(columns)):
        return None
    if isinstance(encoder, OneHotEncoder):
        widths = list(getattr(encoder, "_n_features_outs", []))
        if len(widths) != len(columns):
            return None
    else:
        widths = [1] * len(columns)
    if any(not isinstance(v, str) and not (isinstance(v, float) and math.isnan(v)) and v is not None
           for categories in encoder.categories_ for v in categories):
        return None  # categories that are not text: the model input always holds text
    tables: list[dict[str, np.ndarray]] = []
    missing: list[tuple[np.ndarray, np.ndarray]] = []
    unseen: list[np.ndarray] = []
    offsets = np.cumsum([0, *widths])
    for j, column in enumerate(columns):
        known = [str(v) for v in encoder.categories_[j] if isinstance(v, str)]
        probes: list[Any] = [*known, None, math.nan, _UNSEEN_PROBE]
        frame = pd.DataFrame({c: pd.Series([probes[0] if c != column else p for p in probes], dtype="object")
                              for c in columns})
        try:
            out = np.asarray(transformer.transform(frame))
        except Exception:  # a part that refuses a probe (missing or unseen values) is left to scikit-learn
            return None
        cells = out[:, offsets[j]:offsets[j + 1]]
        tables.append({value: cells[i] for i, value in enumerate(known)})
        missing.append((cells[len(known)], cells[len(known) + 1]))
        unseen.append(cells[len(known) + 2])
    dtype = np.result_type(*(t[0].dtype for t in missing))

    def encode(values: np.ndarray) -> np.ndarray:
        out = np.empty((len(values), int(offsets[-1])), dtype=dtype)
        for j in range(len(columns)):
            table, (none_cells, nan_cells), unseen_cells = tables[j], missing[j], unseen[j]
            block = out[:, offsets[j]:offsets[j + 1]]
            for i, value in enumerate(values[:, j]):
                if isinstance(value, str):
                    block[i] = table.get(value, unseen_cells)
                elif value is None:
                    block[i] = none_cells
                elif isinstance(value, float) and math.isnan(value):
                    block[i] = nan_cells
                else:
                    raise Unsupported(f"column {columns[j]!r}: {type(value).__name__} value")
        return out
    return encode


# --- the column transformer ---------------------------------------------------------------------

@dataclass(frozen=True)
class FastPart:
    key: str  # digest of the fitted part and its columns
    columns: tuple[str, ...]
    numeric: bool
    run: Step


@dataclass(frozen=True)
class FastColumnTransformer:
    parts: tuple[FastPart, ...]

    def transform(self, X: pd.DataFrame, cache: MutableMapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The fitted ColumnTransformer's output for X, bit for bit; each part read from / stored in
        `cache` by its digest (parts shared by several members are computed once per batch).
        Raises `Unsupported` for input it does not reproduce (the caller uses scikit-learn)."""
        cache = {} if cache is None else cache
        outputs = []
        for part in self.parts:
            if part.key not in cache:
                cache[part.key] = part.run(_block(X, part.columns, part.numeric))
            outputs.append(cache[part.key])
        return np.hstack(outputs)


def _block(X: pd.DataFrame, columns: tuple[str, ...], numeric: bool) -> np.ndarray:
    try:
        arrays = [X[c].to_numpy() for c in columns]
    except KeyError as exc:
        raise Unsupported(f"missing column {exc}") from None
    if not numeric:
        return np.column_stack(arrays) if arrays else np.empty((len(X), 0), dtype=object)
    if any(a.dtype.kind not in "fiu" for a in arrays):
        raise Unsupported("a numeric column is not numbers")
    return np.column_stack([a.astype(np.float64, copy=False) for a in arrays])


def compile_column_transformer(transformer: Any) -> FastColumnTransformer | None:
    """The fast equivalent of a fitted ColumnTransformer, or None when any part is not recognised."""
    if not isinstance(transformer, ColumnTransformer) or getattr(transformer, "sparse_output_", False):
        return None
    parts = []
    for _, part, columns in transformer.transformers_:
        if isinstance(part, str) and part == "drop":
            continue
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns) or isinstance(part, str):
            return None
        if not columns:
            continue  # scikit-learn skips empty selections
        encoder = _steps(part)[-1]
        numeric = not isinstance(encoder, _ENCODERS)
        run = _numeric_part(part) if numeric else _categorical_part(part, columns)
        if run is None:
            return None
        parts.append(FastPart(part_digest(part, columns), tuple(columns), numeric, run))
    return FastColumnTransformer(tuple(parts))


# Fitted ColumnTransformers -> their numpy form (None: not compilable), compiled once per fitted
# object. Kept beside the object, not on it, so nothing new is serialised into a runtime or a hash.
_COMPILED: weakref.WeakKeyDictionary[Any, FastColumnTransformer | None] = weakref.WeakKeyDictionary()


def compiled(transformer: Any) -> FastColumnTransformer | None:
    """`compile_column_transformer(transformer)`, once per fitted object; None where it cannot be
    compiled (or fails to: this is an optional path, scikit-learn's own transform is the reference)."""
    try:
        return _COMPILED[transformer]
    except KeyError:
        pass
    except TypeError:  # not weakly referenceable (None, a string step): nothing to compile
        return None
    try:
        fast = compile_column_transformer(transformer)
    except Exception:
        fast = None
    _COMPILED[transformer] = fast
    return fast


def fast_transform(transformer: Any, X: pd.DataFrame,
                   cache: MutableMapping[str, np.ndarray] | None = None) -> np.ndarray | None:
    """The fitted ColumnTransformer's output for X through its numpy form (the same bits, parts shared
    through `cache`), or None where that form does not reproduce it: the caller then uses
    scikit-learn's own transform."""
    fast = compiled(transformer)
    if fast is None:
        return None
    try:
        return fast.transform(X, cache)
    except Unsupported:
        return None


def shared_parts(compiled: Mapping[str, FastColumnTransformer | None]) -> dict[str, list[str]]:
    """Part digest -> the members using it, for parts used by more than one member (reporting)."""
    users: dict[str, list[str]] = {}
    for name, fast in compiled.items():
        for part in fast.parts if fast is not None else ():
            users.setdefault(part.key, []).append(name)
    return {key: names for key, names in users.items() if len(names) > 1}
