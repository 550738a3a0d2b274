"""EnsembleRuntime: members + combiner + calibrator + schema, the one object that turns rows
into scores, and the one place that knows its stored shape (`save` / `load`).

Validation scores the holdout through this object; the registered model and the serving bundle
store it with `save` and the pyfunc loads it with `load`, so what was validated is what is served.
Scoring is batch-invariant (`ensemble.batching`): a row gets the same bits alone or in any batch.

Stored layout (a directory):

    runtime.json              dataset, version, thresholds, unseen-category policy, member order, schema
    members/<member>.skops    each fitted member pipeline
    combiner.skops, calibrator.skops

Fitted parts are stored in `safe_format` (skops with an explicit allow-list, XGBoost as its own
UBJSON): loading a rewritten file cannot execute code, and the same fitted object always gives
the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from ensemble_platform import safe_format
from ensemble_platform.data.schema import LARGEST_USABLE, FeatureSchema, as_model_input
from ensemble_platform.ensemble.batching import MemberScoring, blocked, member_probabilities
from ensemble_platform.ensemble.calibrators import ProbabilityCalibrator
from ensemble_platform.ensemble.cost_aware import Cascade, LazyCombiner, LazyResult, Router
from ensemble_platform.ensemble.strategies import (
    Combiner,
    GreedySelection,
    MajorityVote,
    SingleMember,
    SoftAverage,
    Stacking,
    WeightedAverage,
)
from ensemble_platform.errors import DataError, PlatformError
from ensemble_platform.evaluation.agreement import vote_agreement
from ensemble_platform.members.fast_predict import FAST_PATH_MAX_ROWS, fast_path_enabled
from ensemble_platform.members.scale import ReferenceSampleKNeighbors
from ensemble_platform.policy import UnseenCategoryPolicy

T = TypeVar("T")
SETTINGS_FILE = "runtime.json"
MEMBERS_DIR = "members"
COMBINER_FILE = "combiner.skops"
CALIBRATOR_FILE = "calibrator.skops"


def member_file(name: str) -> str:
    """Where a member is stored, relative to the runtime directory."""
    return f"{MEMBERS_DIR}/{name}.skops"


def payload_digest(directory: Path) -> str:
    """SHA-256 over every file of a stored runtime (`EnsembleRuntime.save`): its relative path and
    the SHA-256 of its bytes, in path order. Equal bytes give equal digests in any directory."""
    directory = Path(directory)
    lines = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            lines.append(f"{path.relative_to(directory).as_posix()}\0{hashlib.file_digest(handle, 'sha256').hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class RegisteredMember:
    """A served member known by name only: its fitted model stays in the registry. A runtime holding
    these can be stored (each member's registered artefact is copied, `save(member_files=...)`) and
    can score from member probabilities already computed (`member_proba`), never call the member."""

    name: str


@dataclass
class EnsembleRuntime:
    dataset: str
    version: str
    schema: FeatureSchema
    members: dict[str, Pipeline | RegisteredMember]  # ordered as the combiner's columns
    combiner: Combiner
    calibrator: ProbabilityCalibrator
    agreement_threshold: float
    decision_threshold: float = 0.5
    unseen_category: UnseenCategoryPolicy = "review"
    max_missing_share: float = 0.5
    # Built from the members on first use (`scoring`): shared preprocessing and the small-input fast path.
    _scoring: tuple[tuple[int, ...], MemberScoring] | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, object]:
        """Pickled / copied without the built scoring (it holds closures; rebuilt on first use)."""
        return {**self.__dict__, "_scoring": None}

    @property
    def scoring(self) -> MemberScoring:
        """The members' shared preprocessing (`ensemble.batching.MemberScoring`), rebuilt if the members change."""
        self._require_loaded()
        identity = tuple(id(model) for model in self.members.values())
        if self._scoring is None or self._scoring[0] != identity:
            self._scoring = (identity, MemberScoring(self.members))
        return self._scoring[1]

    def _require_loaded(self) -> None:
        unloaded = [name for name, model in self.members.items() if isinstance(model, RegisteredMember)]
        if unloaded:
            raise PlatformError(
                f"ensemble {self.dataset} {self.version}: members {unloaded} are registry references, not "
                "loaded models; score with their probabilities (member_proba) or load the registered runtime"
            )

    def member_matrix(self, X: pd.DataFrame) -> np.ndarray:
        """Each member's probability per row, batch-invariant (`ensemble.batching`); preprocessing shared
        by members is computed once."""
        return self.scoring.matrix(X)

    def model_input(self, table: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.schema.features if c not in table.columns]
        if missing:
            raise DataError(f"input is missing feature column(s) {missing}; expected {self.schema.features}")
        if len(table) <= FAST_PATH_MAX_ROWS and fast_path_enabled():
            fast = small_model_input(table, self.schema)
            if fast is not None:
                return fast
        return as_model_input(table, self.schema)

    def unseen_categories(self, X: pd.DataFrame) -> np.ndarray:
        """Rows holding a categorical value no member saw in training, judged by the policy:
        'error' refuses them naming column and values, 'review' flags them, 'ignore' scores them."""
        unseen = np.zeros(len(X), dtype=bool)
        small = len(X) <= FAST_PATH_MAX_ROWS and fast_path_enabled()
        for column in self.schema.categorical:
            known = set(self.schema.categories.get(column, ()))
            values = X[column]
            if small:  # the same test value by value, without pandas' per-call overhead
                new = np.array([not _is_missing(v) and v not in known for v in values.to_numpy()], dtype=bool)
            else:
                new = (values.notna() & ~values.isin(known)).to_numpy()
            if new.any() and self.unseen_category == "error":
                raise DataError(
                    f"column {column!r} has value(s) never seen in training "
                    f"{sorted(set(values[new]))[:5]} in {int(new.sum())} row(s); allowed: {sorted(known)} "
                    "(unseen_category policy 'error')"
                )
            unseen |= new
        return unseen if self.unseen_category == "review" else np.zeros(len(X), dtype=bool)

    def combined_proba(self, P: np.ndarray, X: pd.DataFrame) -> np.ndarray:
        """The combiner's probability before post-hoc calibration (on the rows given, as one block)."""
        return self.combiner.positive_proba(P, X if self.combiner.needs_features else None)

    def proba_from_members(self, P: np.ndarray, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(before, after calibration) for member probabilities already computed (reports reuse
        the members' validated holdout predictions instead of predicting again). Combiner and
        calibrator run on fixed blocks of rows: a row's result does not depend on its batch."""
        needs_features = self.combiner.needs_features
        combined = blocked(lambda rows: self.combiner.positive_proba(P[rows], X.iloc[rows] if needs_features else None),
                           len(P))
        return combined, blocked(lambda rows: self.calibrator.transform(combined[rows]), len(combined))

    def member_and_ensemble_proba(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(members' probabilities, the calibrated ensemble probability) for monitoring: no review
        routing and no unseen-category policy, which are decisions, not measurements."""
        X = self.model_input(table)
        P = self.member_matrix(X)
        return P, self.proba_from_members(P, X)[1]

    @property
    def lazy(self) -> bool:
        """Whether a row calls only the members it needs (cascade, router)."""
        return isinstance(self.combiner, LazyCombiner)

    def lazy_member_proba(
        self, X: pd.DataFrame, member_proba: np.ndarray | None = None
    ) -> tuple[np.ndarray, LazyResult]:
        """(member probabilities, NaN where a member was not called; the lazy result): each member is
        called only on the rows that need it. Batch-invariant like the eager path: members score
        rows batch-invariantly (`ensemble.batching`), the cascade's arithmetic is value by value and
        the router scores its features on fixed blocks, so a row's result equals the eager one.
        `member_proba`: the members' probabilities already computed (read instead of calling them)."""
        if not isinstance(self.combiner, LazyCombiner):
            raise TypeError(f"{type(self.combiner).__name__} is not a lazy combiner")
        if member_proba is None:
            self._require_loaded()
        models = list(self.members.values())
        P = np.full((len(X), len(models)), np.nan)

        def fetch(j: int, rows: np.ndarray) -> np.ndarray:
            values = (member_probabilities(models[j], X.iloc[rows]) if member_proba is None
                      else member_proba[rows, j])
            P[rows, j] = values
            return values

        return P, self.combiner.lazy_proba(fetch, len(X), X if self.combiner.needs_features else None)

    def mostly_missing(self, X: pd.DataFrame) -> np.ndarray:
        """Rows missing more than `max_missing_share` of their features: the members impute them,
        so the score looks confident while it rests on almost nothing."""
        return missing_shares(X) > self.max_missing_share

    def score(self, table: pd.DataFrame, member_proba: np.ndarray | None = None) -> pd.DataFrame:
        """Probability (calibrated), decision, agreement and review flag per input row.
        `member_proba`: the members' probabilities of these rows, already computed (validation
        passes the stored, bit-identical holdout predictions instead of predicting again)."""
        if len(table) == 0:
            self.model_input(table)  # still names missing columns
            return pd.DataFrame({"probability": pd.Series(dtype=float), "decision": pd.Series(dtype=int),
                                 "agreement": pd.Series(dtype=float), "needs_review": pd.Series(dtype=bool)})
        X = self.model_input(table)
        unseen = self.unseen_categories(X)
        if self.lazy:
            P, result = self.lazy_member_proba(X, member_proba)
            proba = blocked(lambda rows: self.calibrator.transform(result.proba[rows]), len(X))
            agreement = called_vote_agreement(P, proba, self.decision_threshold)
        else:
            P = self.member_matrix(X) if member_proba is None else member_proba
            _, proba = self.proba_from_members(P, X)
            # Agreement compares each member's own vote with the ensemble's decision at one threshold.
            agreement = vote_agreement(P, proba, self.decision_threshold)
        return pd.DataFrame(
            {
                "probability": proba,
                "decision": (proba >= self.decision_threshold).astype(int),
                "agreement": agreement,
                "needs_review": (agreement < self.agreement_threshold) | unseen | self.mostly_missing(X),
            },
            index=table.index,
        )

    # --- stored shape ------------------------------------------------------------------------

    def settings(self) -> dict[str, object]:
        """Everything but the fitted parts, as JSON-ready values."""
        return {
            "dataset": self.dataset,
            "version": self.version,
            "member_order": list(self.members),
            "agreement_threshold": self.agreement_threshold,
            "decision_threshold": self.decision_threshold,
            "unseen_category": self.unseen_category,
            "max_missing_share": self.max_missing_share,
            "schema": self.schema.to_dict(),
        }

    def save(self, directory: Path, member_files: Mapping[str, Path] | None = None) -> list[str]:
        """Write the runtime into `directory` (created; must not hold a runtime yet). A member given
        in `member_files` is copied byte for byte (a bundle's members are the registry's artefacts);
        the others are serialised. Returns the relative paths written."""
        directory = Path(directory)
        (directory / MEMBERS_DIR).mkdir(parents=True, exist_ok=False)
        for name, model in self.members.items():
            target = directory / member_file(name)
            if member_files is not None and name in member_files:
                shutil.copyfile(member_files[name], target)
            elif isinstance(model, RegisteredMember):
                raise PlatformError(f"cannot store member {name} of ensemble {self.dataset} {self.version}: "
                                    "it is a registry reference and no artefact file was given")
            else:
                target.write_bytes(_dumps(model))
        (directory / COMBINER_FILE).write_bytes(_dumps(self.combiner))
        (directory / CALIBRATOR_FILE).write_bytes(_dumps(self.calibrator))
        (directory / SETTINGS_FILE).write_text(json.dumps(self.settings(), indent=2, sort_keys=True))
        return [SETTINGS_FILE, COMBINER_FILE, CALIBRATOR_FILE, *(member_file(n) for n in self.members)]

    @classmethod
    def load(cls, directory: Path) -> EnsembleRuntime:
        """The runtime stored by `save` in `directory` (trusted storage: our own registry)."""
        directory = Path(directory)
        settings = json.loads((directory / SETTINGS_FILE).read_text())
        names = [SETTINGS_FILE, COMBINER_FILE, CALIBRATOR_FILE, *(member_file(n) for n in settings["member_order"])]
        return cls.from_files({name: (directory / name).read_bytes() for name in names})

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> EnsembleRuntime:
        """The runtime from the stored files' bytes (relative path -> content): a caller that
        verified those very bytes loads exactly what it verified, with no second read from disk."""
        def content(name: str) -> bytes:
            if name not in files:
                raise DataError(f"stored runtime is missing {name}")
            return files[name]

        settings = json.loads(content(SETTINGS_FILE))
        return cls(
            dataset=settings["dataset"],
            version=settings["version"],
            schema=FeatureSchema.from_dict(settings["schema"]),
            members={name: _loads(content(member_file(name))) for name in settings["member_order"]},
            combiner=_typed(_loads(content(COMBINER_FILE)), Combiner, COMBINER_FILE),
            calibrator=_typed(_loads(content(CALIBRATOR_FILE)), ProbabilityCalibrator, CALIBRATOR_FILE),
            agreement_threshold=settings["agreement_threshold"],
            decision_threshold=settings["decision_threshold"],
            unseen_category=settings["unseen_category"],
            max_missing_share=settings.get("max_missing_share", 0.5),
        )


def small_model_input(table: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame | None:
    """`as_model_input(table, schema)` for input already in its form (numeric columns of numbers, text
    or missing categoricals), built directly: the same frame (values, dtypes, index) without its
    per-column pandas passes (~4 ms for one row). None for anything else (wrong types, values
    `as_model_input` refuses): the caller then runs `as_model_input`, which converts or names the problem."""
    data: dict[str, np.ndarray] = {}
    for column in schema.features:
        values = table[column].to_numpy()
        if column in schema.categorical:
            if values.dtype != object:
                return None
            text = np.empty(len(values), dtype=object)
            for i, value in enumerate(values):
                if isinstance(value, str):
                    text[i] = value
                elif value is None or (isinstance(value, float) and value != value):
                    text[i] = None
                else:
                    return None
            data[column] = text
        else:
            if values.dtype.kind not in "fiu":
                return None
            numbers = values.astype(np.float64)
            if np.any(np.abs(numbers) > LARGEST_USABLE) or np.any(np.isinf(numbers)):
                return None
            data[column] = numbers
    return pd.DataFrame(data, index=table.index, columns=schema.features)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA


def missing_shares(X: pd.DataFrame) -> np.ndarray:
    """Share of each row's features that are missing (`X.isna().mean(axis=1)`, the same bits: a count
    of missing cells divided by the column count); small inputs without pandas' per-call overhead."""
    if len(X) > FAST_PATH_MAX_ROWS or not fast_path_enabled() or X.shape[1] == 0:
        return X.isna().mean(axis=1).to_numpy()
    counts = np.zeros(len(X), dtype=np.int64)
    for column in X.columns:
        values = X[column].to_numpy()
        if values.dtype.kind == "f":
            counts += np.isnan(values)
        elif values.dtype == object:
            counts += np.array([_is_missing(v) for v in values], dtype=bool)
        else:
            counts += pd.isna(values)
    return counts / X.shape[1]


def called_vote_agreement(P: np.ndarray, proba: np.ndarray, threshold: float) -> np.ndarray:
    """Share of the members that voted (not NaN: called for the row) whose decision equals the
    ensemble's; equals `vote_agreement` when every member was called."""
    called = ~np.isnan(P)
    same = (np.where(called, P, 0.0) >= threshold) == (np.asarray(proba) >= threshold)[:, None]
    return (same & called).sum(axis=1) / np.maximum(called.sum(axis=1), 1)


def _dumps(part: object) -> bytes:
    return safe_format.dumps(part)


def load_member_artefact(data: bytes) -> object:
    """A member's safe artefact (stored beside its MLflow model in the registry), loaded as a stored
    runtime's members are: allow-listed types only, nothing unpickled."""
    return _loads(data)


def _loads(data: bytes) -> object:
    """Only scikit-learn/XGBoost parts on safe_format's list and the platform's own combiners,
    calibrator and schema load; anything else is refused before it is constructed."""
    return safe_format.loads(data, OWN_TYPES)


# The platform's own classes a stored runtime may contain (Stacking with passthrough holds a schema).
OWN_TYPES: tuple[str, ...] = safe_format.allowed_names(
    MajorityVote, SingleMember, SoftAverage, WeightedAverage, GreedySelection, Stacking, Cascade, Router,
    FeatureSchema, ProbabilityCalibrator,
    ReferenceSampleKNeighbors,  # the k-NN member bounded at scale (members.scale)
)


def _typed(part: object, expected: type[T], name: str) -> T:
    if not isinstance(part, expected):
        raise DataError(f"stored runtime file {name} holds a {type(part).__name__}, not a {expected.__name__}")
    return part
