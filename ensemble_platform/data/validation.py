"""Great Expectations 1.x suite built from the spec and the inferred schema, and its result.

The same suite serves the training table and, later, each new data batch: it encodes what the
members were trained to expect (columns, types, categories, label values).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import pandas as pd

from ensemble_platform.data.schema import FeatureSchema
from ensemble_platform.data.spec import DatasetSpec

_NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "Int64", "float16", "float32", "float64", "Float64",
                  "uint8", "uint16", "uint32", "uint64"]
# A feature that is mostly missing in new data means an upstream break, not a modelling problem.
_MIN_NON_NULL_SHARE = 0.5
_MIN_ROWS = 20


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    observed: str


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
            f"{o.expectation}({o.column or 'table'}): observed {o.observed}" for o in self.failures
        )


def build_expectations(spec: DatasetSpec, schema: FeatureSchema, batch: bool = False) -> list:
    """The suite for the training table, or (`batch=True`) for a new batch of production data:
    a batch needs the feature columns, may lack labels (when it has them they must be the
    training labels) and the sensitive attributes, and may be small."""
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
    for column in schema.features:
        expectations.append(
            gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(column=column, min_value=_MIN_NON_NULL_SHARE)
        )
    for column, categories in schema.categories.items():
        # `mostly` tolerates a rare new category (members encode it as unknown) but not a recoding.
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(categories), mostly=0.95)
        )
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
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    expectations = build_expectations(spec, schema, batch=labels is not None)
    if labels is not None and spec.target in table.columns:
        import great_expectations.expectations as gxe

        expectations.append(gxe.ExpectColumnValuesToBeInSet(column=spec.target, value_set=labels))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite)
    )
    # Categoricals are compared as text, as the members see them.
    frame = table.copy()
    as_text = [*schema.categorical, *([spec.target] if labels is not None else [])]
    for column in as_text:
        if column in frame:
            frame[column] = frame[column].map(lambda v: v if pd.isna(v) else str(v))
    result = definition.run(batch_parameters={"dataframe": frame})
    outcomes = [_outcome(r) for r in result.results]
    stats = result.statistics
    return DataValidationResult(
        success=bool(result.success),
        evaluated=int(stats["evaluated_expectations"]),
        successful=int(stats["successful_expectations"]),
        outcomes=outcomes,
    )


def _outcome(result) -> ExpectationOutcome:
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
    return ExpectationOutcome(
        expectation=config.type,
        column=config.kwargs.get("column"),
        success=bool(result.success),
        observed=text[:300],
    )
