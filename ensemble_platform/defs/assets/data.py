"""Data stage: the raw table (checked by a blocking Great Expectations check) and the split."""


import dagster as dg
import pandas as pd

from ensemble_platform.data.batches import BatchStore
from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.data.loading import content_hash, load_dataset
from ensemble_platform.data.reference import TrainingReference
from ensemble_platform.data.schema import FeatureSchema, infer_schema
from ensemble_platform.data.splitting import TrainHoldoutSplit, split_dataset
from ensemble_platform.data.validation import validate_table
from ensemble_platform.defs.owners import owners
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.files import write_json
from ensemble_platform.governance.rendering import md_table

GROUP = "data"


@dg.asset(group_name=GROUP, owners=owners(GROUP), kinds={"pandas"})
def raw_dataset(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.Output[pd.DataFrame]:
    """The dataset spec's table, checked against the spec (columns, target, parseable values)."""
    spec = platform.spec()
    additions = BatchStore(platform.paths).training_additions(spec)
    table = load_dataset(spec, additions)
    DatasetCatalog(platform.paths).register(spec)
    context.log.info(f"loaded {spec.source}: {table.shape[0]} rows x {table.shape[1]} columns"
                     + (f", of which {sum(map(len, additions))} from {len(additions)} labelled batch(es)" if additions else ""))
    return dg.Output(
        table,
        metadata={
            "dataset": spec.name,
            "source": spec.source,
            "rows": len(table),
            "rows_from_batches": sum(map(len, additions)),
            "batches_included": len(additions),
            "columns": dg.MetadataValue.json(list(map(str, table.columns))),
            "positive_rate": float((table[spec.target] == spec.positive_label).mean()),
        },
    )


@dg.asset_check(asset=raw_dataset, blocking=True, description="Great Expectations suite built from the spec")
def raw_dataset_expectations(raw_dataset: pd.DataFrame, platform: PlatformResource) -> dg.AssetCheckResult:
    spec = platform.spec()
    schema = infer_schema(raw_dataset, spec)
    result = validate_table(raw_dataset, spec, schema)
    # Kept by data hash: the model card of every version built on this data cites it. With it, what
    # inference made of the columns (not used and why, mostly empty, many levels, date parts).
    record = write_json({**result.to_dict(), "inference": schema.inference_rows()},
                        platform.paths.data_validation_path(spec.name, content_hash(raw_dataset)))
    failures = md_table(["column", "expectation", "expected", "observed", "change"],
                        [[o.column or "table", o.expectation, o.expected, o.observed, o.remedy] for o in result.failures])
    return dg.AssetCheckResult(
        passed=result.success,
        description=None if result.success else f"failed: {result.failure_summary()}",
        metadata={
            "evaluated_expectations": result.evaluated,
            "successful_expectations": result.successful,
            "failures": dg.MetadataValue.md(failures if result.failures else "none"),
            "column_inference": dg.MetadataValue.md(_inference_table(schema)),
            "result": dg.MetadataValue.json(result.to_dict()),
            "result_path": dg.MetadataValue.path(str(record)),
        },
    )


def _inference_table(schema: FeatureSchema) -> str:
    rows = schema.inference_rows()
    return md_table(["column", "role", "why"], rows) if rows else "every column used as inferred (numeric / categorical)"


@dg.asset(group_name=GROUP, owners=owners(GROUP), kinds={"pandas"})
def train_holdout_split(
    context: dg.AssetExecutionContext, raw_dataset: pd.DataFrame, platform: PlatformResource
) -> dg.Output[TrainHoldoutSplit]:
    """Stratified, seeded train/holdout split with shared folds; the holdout is for validation only."""
    split = split_dataset(raw_dataset, platform.spec())
    TrainingReference.write(platform.paths, split)
    context.log.info(f"split: {len(split.train)} training rows in {split.n_folds} folds, {len(split.holdout)} holdout")
    for column, role, why in split.schema.inference_rows():
        context.log.info(f"column {column!r}: {role}: {why}")
    missing = md_table(["feature", "missing share (training rows)"], sorted(split.schema.missing_share.items()))
    return dg.Output(
        split,
        metadata={**split.lineage(), "schema": dg.MetadataValue.json(split.schema.to_dict()),
                  "column_inference": dg.MetadataValue.md(_inference_table(split.schema)),
                  "missingness_baseline": dg.MetadataValue.md(missing)},
    )
