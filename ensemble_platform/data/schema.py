"""Feature schema inferred from the data: which columns are numeric, which categorical."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.errors import DataError

# Categoricals with more levels than this are encoded by every member with the most frequent
# levels kept and the rest grouped as one (histogram gradient boosting accepts at most 255).
MAX_CATEGORY_LEVELS = 100
# The numeric parts a date/time column is replaced by (each a column `<name>_<part>`).
DATETIME_PARTS = ("year", "month", "day_of_week", "days")
# Free text: most values are several words and most are different (a job title is not text).
_TEXT_MEDIAN_WORDS = 4
_TEXT_UNIQUE_SHARE = 0.5
# A column needs this many values before "unique per row" says identifier rather than chance.
_ID_MIN_ROWS = 20
_ISO_DATETIME = (r"^\d{4}-\d{1,2}-\d{1,2}"
                 r"([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")


@dataclass(frozen=True)
class FeatureSchema:
    """The model inputs: numeric and categorical feature columns, and categories seen; and what
    inference found on the training rows: each feature's missing share (the baseline batches are
    checked against), the columns that are not features and why, and notes on the features."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sensitive: tuple[str, ...] = ()
    missing_share: dict[str, float] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    datetime: tuple[str, ...] = ()  # date/time columns whose numeric parts are features

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSchema:
        return cls(tuple(data["numeric"]), tuple(data["categorical"]),
                   {k: tuple(v) for k, v in data["categories"].items()}, tuple(data.get("sensitive", ())),
                   {k: float(v) for k, v in data.get("missing_share", {}).items()},
                   dict(data.get("excluded", {})), dict(data.get("notes", {})), tuple(data.get("datetime", ())))

    def inference_rows(self) -> list[list[str]]:
        """(column, role, why) for every column inference did more than type: what the UI and the
        data validation report show."""
        rows = [[c, "not used", why] for c, why in self.excluded.items()]
        return rows + [[c, "numeric" if c in self.numeric else "categorical", note] for c, note in self.notes.items()]


def feature_columns(table: pd.DataFrame, spec: DatasetSpec) -> list[str]:
    excluded = {spec.target, *spec.drop}
    if not spec.use_sensitive_as_features:
        excluded |= set(spec.sensitive)
    return [c for c in table.columns if c not in excluded]


def infer_schema(table: pd.DataFrame, spec: DatasetSpec) -> FeatureSchema:
    numeric: list[str] = []
    categorical: list[str] = []
    excluded: dict[str, str] = {}
    notes: dict[str, str] = {}
    dates = datetime_columns(table, spec)
    parts = {part_name(c, p): c for c in dates for p in DATETIME_PARTS}
    for column in feature_columns(table, spec):
        role, why = _role(table[column], spec, dates, parts)
        if role == "excluded":
            excluded[column] = str(why)
            continue
        (numeric if role == "numeric" else categorical).append(column)
        missing = float(table[column].isna().mean())
        if column in parts:
            notes[column] = f"numeric part of date/time column {parts[column]!r}"
        elif missing > spec.columns.report_missing_above:
            notes[column] = (f"mostly empty: {missing:.0%} missing in the training rows (kept; batches are checked "
                             f"against this share; spec field columns.drop_missing_above or drop removes it)")
    categories = {
        c: tuple(sorted(map(str, table[c].dropna().unique()))) for c in categorical
    }
    for column, levels in categories.items():
        if len(levels) > MAX_CATEGORY_LEVELS:
            notes[column] = (f"{len(levels)} levels: members keep the {MAX_CATEGORY_LEVELS} most frequent and "
                             f"group the rest" + (f"; {notes[column]}" if column in notes else ""))
    missing_share = {c: float(table[c].isna().mean()) for c in [*numeric, *categorical]}
    return FeatureSchema(tuple(numeric), tuple(categorical), categories, tuple(spec.sensitive), missing_share,
                         excluded, notes, tuple(c for c in dates if c in table.columns))


def _role(values: pd.Series, spec: DatasetSpec, dates: list[str], parts: dict[str, str]) -> tuple[str, str | None]:
    """('numeric' | 'categorical' | 'excluded', why excluded) for one feature column: spec
    overrides first, then what the training values look like."""
    column = str(values.name)
    missing = float(values.isna().mean())
    limit = spec.columns.drop_missing_above
    if column in dates:
        origin = "spec field datetime" if column in spec.datetime else "inferred"
        return "excluded", (f"date/time ({origin}): used through its numeric parts "
                            f"{[part_name(column, p) for p in DATETIME_PARTS]}")
    if values.notna().sum() == 0:
        return "excluded", "no values in the training rows"
    if limit is not None and missing > limit:
        return "excluded", (f"mostly empty: {missing:.0%} missing in the training rows, above "
                            f"spec field columns.drop_missing_above ({limit})")
    if column in spec.text:
        return "excluded", "free text (spec field text); list it under 'categorical' to use it as levels"
    if column in spec.numeric or column in parts:
        return "numeric", None
    if column in spec.categorical:
        return "categorical", None
    if _is_number(values):
        why = _identifier_reason(values, integer=True)
        return ("excluded", why) if why else ("numeric", None)
    why = _text_reason(values) or _identifier_reason(values)
    return ("excluded", why) if why else ("categorical", None)


def _is_number(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _text_reason(values: pd.Series) -> str | None:
    counts = _text_counts(values)
    if counts.empty:
        return None
    # Word counts of each distinct text, repeated as often as it occurs: the median over rows, as
    # `present.str.split().str.len().median()` gives it, splitting each distinct value once.
    words = pd.Series(np.repeat(counts.index.str.split().str.len().to_numpy(), counts.to_numpy()))
    unique = len(counts) / int(counts.sum())
    if words.median() >= _TEXT_MEDIAN_WORDS and unique >= _TEXT_UNIQUE_SHARE:
        return (f"free text (inferred: median {words.median():.0f} words, {unique:.0%} of values distinct); "
                "list it under 'categorical' to use it as levels")
    return None


def _text_counts(values: pd.Series) -> pd.Series:
    """Rows per distinct text of the present values: the row-wise string work (splitting into words,
    matching a date pattern) then runs once per distinct text, a handful in a categorical column."""
    return values.dropna().astype(str).value_counts(sort=False)


def _identifier_reason(values: pd.Series, integer: bool = False) -> str | None:
    """Unique per row: an identifier carries no pattern a member could learn (for integer columns
    only when the values are also a dense range, as row numbers and sequence ids are)."""
    present = values.dropna()
    if len(present) < _ID_MIN_ROWS or present.nunique() != len(present):
        return None
    if integer:
        whole = pd.api.types.is_integer_dtype(present) or bool((present == present.round()).all())
        if not whole or float(present.max() - present.min()) + 1 > 2 * len(present):
            return None
    override = "numeric" if integer else "categorical"
    return (f"identifier-like (inferred: unique per row, {len(present)} distinct values); "
            f"list it under '{override}' to use it, or under 'drop'")


def part_name(column: str, part: str) -> str:
    return f"{column}_{part}"


def datetime_columns(table: pd.DataFrame, spec: DatasetSpec) -> list[str]:
    """Date/time columns among the features: declared under `datetime`, of a datetime type, or text
    that is ISO 8601 (YYYY-MM-DD, optionally with a time) in every row that has a value."""
    found = []
    for column in feature_columns(table, spec):
        if column in spec.numeric or column in spec.categorical or column in spec.text:
            continue
        values = table[column]
        if column in spec.datetime or pd.api.types.is_datetime64_any_dtype(values):
            found.append(column)
        elif values.dtype == object:
            present = _text_counts(values).index  # each distinct text once
            if len(present) and bool(present.str.match(_ISO_DATETIME).all()):
                found.append(column)
    return found


def with_datetime_parts(table: pd.DataFrame, columns: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """`table` with the numeric parts of each date/time column added (year, month, day of week
    0=Monday, days since 1970-01-01 with the time as a fraction; times in UTC); the column itself
    stays. A value that is not a date is an error naming the column."""
    if not columns:
        return table
    table = table.copy()
    for column in columns:
        if column not in table.columns:
            continue
        values = table[column]
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        bad = values[parsed.isna() & values.notna()]
        if len(bad):
            raise DataError(f"column {column!r} is a date/time column but has {len(bad)} value(s) that are not "
                            f"dates, e.g. {sorted(map(str, bad.unique()))[:5]}; fix the data or list the column "
                            "under 'categorical'")
        days = (parsed - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(days=1)
        derived = {"year": parsed.dt.year, "month": parsed.dt.month, "day_of_week": parsed.dt.dayofweek,
                   "days": days}
        for part in DATETIME_PARTS:
            table[part_name(column, part)] = derived[part].astype("float64")
    return table


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
LARGEST_USABLE = float(np.finfo(np.float32).max)


def _refuse_non_finite(values: pd.Series) -> None:
    bad = values.notna() & ~(values.abs() <= LARGEST_USABLE)
    if bad.any():
        rows = list(values.index[bad.to_numpy()][:5])
        raise DataError(f"column {values.name!r} has {int(bad.sum())} infinite or out-of-range value(s) "
                        f"(|x| > {LARGEST_USABLE:.3g}) in row(s) {rows}; send a finite number or leave it missing")


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
