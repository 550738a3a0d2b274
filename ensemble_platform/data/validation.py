"""Great Expectations 1.x suite built from the spec and the inferred schema, and its result.

The same suite serves the training table and, later, each new data batch: it encodes what the
members were trained to expect (columns, types, categories, label values).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import pandas as pd

from ensemble_platform.data.labels import label_text
from ensemble_platform.data.schema import MAX_CATEGORY_LEVELS, FeatureSchema, with_datetime_parts
from ensemble_platform.data.spec import DatasetSpec

_NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "Int64", "float16", "float32", "float64", "Float64",
                  "uint8", "uint16", "uint32", "uint64"]
# A schema without a training missingness profile (a reference written before profiles existed):
# a batch feature mostly missing means an upstream break.
_LEGACY_MIN_NON_NULL_SHARE = 0.5
_MIN_ROWS = 20
# Standard errors of a share measured on the batch's rows added to the spec's tolerance: a small
# batch of a sparse column must not be quarantined for sampling noise.
_SAMPLING_ERRORS = 3.0
NON_NULL = "expect_column_proportion_of_non_null_values_to_be_between"


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    observed: str
    expected: str = ""
    remedy: str = ""  # the spec field (or the data) that changes the verdict


@dataclass(frozen=True)
class DataValidationResult:
    """The outcome of one suite run, in plain types (JSON-ready for reports and the model card)."""

    success: bool
    evaluated: int
    successful: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def to_dict(self) -> dict:
        return asdict(self)

    def failure_summary(self) -> str:
        return "; ".join(
            f"{o.expectation}({o.column or 'table'}): observed {o.observed}"
            + (f", expected {o.expected}" if o.expected else "") + (f" (change: {o.remedy})" if o.remedy else "")
            for o in self.failures
        )


def build_expectations(spec: DatasetSpec, schema: FeatureSchema, batch: bool = False, rows: int = 0) -> list:
    """The suite for the training table, or (`batch=True`) for a new batch of production data:
    a batch needs the feature columns, may lack labels (when it has them they must be the
    training labels) and the sensitive attributes, and may be small.

    Missing values: the training table is the baseline (a feature may be as empty as
    `columns.max_missing_share`); a batch of `rows` rows must keep each feature's non-null share
    within `columns.missing_tolerance` (plus sampling error) of the training share."""
    import great_expectations.expectations as gxe

    expectations: list = [gxe.ExpectTableRowCountToBeBetween(min_value=1 if batch else _MIN_ROWS)]
    required = schema.features if batch else [spec.target, *schema.features, *spec.sensitive]
    for column in required:
        expectations.append(gxe.ExpectColumnToExist(column=column))
    if not batch:
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=spec.target),
            gxe.ExpectColumnUniqueValueCountToBeBetween(column=spec.target, min_value=2, max_value=2),
            gxe.ExpectColumnDistinctValuesToContainSet(column=spec.target, value_set=[spec.positive_label]),
        ]
    for column in schema.numeric:
        expectations.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=_NUMERIC_TYPES))
    expectations += _missingness(spec, schema, batch, rows)
    for column, categories in schema.categories.items():
        if len(categories) > MAX_CATEGORY_LEVELS:
            # A wide column's rare levels come and go (a typed job title): members group them and
            # score unseen ones, so new levels are no sign of a broken feed.
            continue
        # `mostly` tolerates a rare new category (members encode it as unknown) but not a recoding.
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(categories), mostly=0.95)
        )
    return expectations


def _missingness(spec: DatasetSpec, schema: FeatureSchema, batch: bool, rows: int) -> list:
    import great_expectations.expectations as gxe

    if not batch:
        floor = round(1.0 - spec.columns.max_missing_share, 6)
        return [gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(column=c, min_value=floor)
                for c in schema.features] if floor > 0 else []
    if not schema.missing_share:
        return [gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(column=c, min_value=_LEGACY_MIN_NON_NULL_SHARE)
                for c in schema.features]
    expectations = []
    for column in schema.features:
        share = 1.0 - schema.missing_share.get(column, 0.0)
        allowance = spec.columns.missing_tolerance + _SAMPLING_ERRORS * math.sqrt(share * (1 - share) / max(rows, 1))
        expectations.append(gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
            column=column, min_value=round(max(0.0, share - allowance), 6), max_value=round(min(1.0, share + allowance), 6),
            meta={"training_non_null_share": round(share, 6)},
        ))
    return expectations


def validate_table(
    table: pd.DataFrame, spec: DatasetSpec, schema: FeatureSchema, suite_name: str | None = None,
    labels: list[str] | None = None,
) -> DataValidationResult:
    """Run the suite on `table` with an ephemeral GX context (nothing is written to disk).

    With `labels` (the training table's label values) the batch suite is run: see
    `build_expectations(batch=True)`; a target column present in the batch must hold only those."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # Progress bars would interleave with Dagster's run log; the result carries the numbers.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    name = suite_name or f"{spec.name}_suite"
    source = context.data_sources.add_pandas(name=f"{name}_source")
    asset = source.add_dataframe_asset(name=f"{name}_asset")
    batch = asset.add_batch_definition_whole_dataframe(f"{name}_batch")
    batch_suite = labels is not None
    if batch_suite and schema.datetime:
        table = with_datetime_parts(table, [c for c in schema.datetime if c in table.columns])
    expectations = build_expectations(spec, schema, batch=batch_suite, rows=len(table))
    if labels is not None and spec.target in table.columns:
        import great_expectations.expectations as gxe

        expectations.append(gxe.ExpectColumnValuesToBeInSet(column=spec.target,
                                                            value_set=sorted({str(label_text(v)) for v in labels})))
    # The suite is stored once with all its expectations: `add_expectation` on a stored suite
    # re-serialises the whole suite into the store per expectation (0.5 s of a 2 s data run at 10k rows).
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite)
    )
    # Categoricals are compared as text, as the members see them.
    frame = table.copy()
    for column in schema.categorical:
        if column in frame:
            frame[column] = frame[column].map(lambda v: v if pd.isna(v) else str(v))
    if labels is not None and spec.target in frame:
        frame[spec.target] = frame[spec.target].map(label_text)
    result = definition.run(batch_parameters={"dataframe": frame})
    outcomes = [_outcome(r, spec, batch_suite) for r in result.results]
    stats = result.statistics
    return DataValidationResult(
        success=bool(result.success),
        evaluated=int(stats["evaluated_expectations"]),
        successful=int(stats["successful_expectations"]),
        outcomes=outcomes,
    )


def _outcome(result, spec: DatasetSpec, batch: bool) -> ExpectationOutcome:
    config = result.expectation_config
    observed = result.result or {}
    if result.exception_info and result.exception_info.get("raised_exception"):
        text = str(result.exception_info.get("exception_message"))
    elif "observed_value" in observed:
        text = str(observed["observed_value"])
    elif "unexpected_percent" in observed:
        sample = observed.get("partial_unexpected_list", [])[:5]
        text = f"{observed['unexpected_percent']:.2f}% unexpected, e.g. {sample}"
    else:
        text = "ok" if result.success else "failed"
    column = config.kwargs.get("column")
    return ExpectationOutcome(
        expectation=config.type,
        column=column,
        success=bool(result.success),
        observed=text[:300],
        expected=_expected(config.type, config.kwargs, config.meta or {}),
        remedy=_remedy(config.type, column, spec, batch),
    )


def _expected(kind: str, kwargs: dict, meta: dict) -> str:
    """What the expectation asked for, in words."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    bounds = (f"between {low} and {high}" if low is not None and high is not None
              else f"at least {low}" if low is not None else f"at most {high}" if high is not None else "")
    if kind == NON_NULL:
        baseline = meta.get("training_non_null_share")
        return (f"a non-null share {bounds}" + (f" (training rows: {baseline})" if baseline is not None else ""))
    if "value_set" in kwargs:
        values = list(kwargs["value_set"])
        listed = f"{values[:8]}" + (f" and {len(values) - 8} more" if len(values) > 8 else "")
        mostly = kwargs.get("mostly")
        return f"values in {listed}" + (f" for at least {mostly:.0%} of rows" if mostly else "")
    if "type_list" in kwargs:
        return "a numeric type"
    if kind == "expect_column_to_exist":
        return "the column to exist"
    if kind == "expect_column_values_to_not_be_null":
        return "no missing values"
    return bounds


def _remedy(kind: str, column: str | None, spec: DatasetSpec, batch: bool) -> str:
    """The spec field (or the data) that changes the verdict of a failing expectation."""
    if column == spec.target:
        return "spec fields 'target' / 'positive_label', or the labels in the data"
    if kind == NON_NULL:
        if batch:
            return ("spec field 'columns.missing_tolerance' (or retrain on data with this missingness; "
                    "'drop' / 'columns.drop_missing_above' removes the column)")
        return ("spec field 'drop' or 'columns.drop_missing_above' (drop the column), or "
                "'columns.max_missing_share' (train with it)")
    if kind == "expect_column_values_to_be_in_type_list":
        return "spec field 'categorical' (use the column as levels), or fix the values"
    if kind == "expect_column_values_to_be_in_set":
        return "retrain on data with these levels, or spec field 'drop'"
    if kind == "expect_column_to_exist":
        return "send the column (members were trained on it), or spec field 'drop' and retrain"
    if kind == "expect_table_row_count_to_be_between":
        return "more rows in the data"
    return ""
