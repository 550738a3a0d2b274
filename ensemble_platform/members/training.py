"""Fit one member: out-of-fold probabilities on the shared folds, refit on all training rows,
holdout probabilities from the refit model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from ensemble_platform import __version__
from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.evaluation.metrics import binary_metrics
from ensemble_platform.logging_utils import ProgressLog, null_log
from ensemble_platform.members.catalogue import (
    get_member_spec,
    key_params,
    model_params,
    pipeline_definition,
    predict_single_threaded,
)
from ensemble_platform.members.fast_predict import fast_predict_proba
from ensemble_platform.members.scale import bounded_for_rows
from ensemble_platform.threads import single_threaded_blas


@dataclass(frozen=True)
class MemberFit:
    """A fitted member and the predictions the ensemble stage needs (frozen: registration returns
    a new one with its registry coordinates, `dataclasses.replace`)."""

    name: str
    family: str
    # Refit on the whole training split; None in a record (`record()`): what asset values hold,
    # the fitted model itself being a registry artefact loaded only where scoring happens.
    pipeline: Pipeline | None
    oof_proba: np.ndarray  # one per training row, each from a model that did not see it
    holdout_proba: np.ndarray
    oof_metrics: dict[str, float]
    params: dict[str, object]
    definition: dict[str, str]  # every setting of every pipeline step (what the fingerprint hashes)
    fit_seconds: float
    train_hash: str
    fingerprint: str  # identifies (data, member definition, seed, code): same => same model
    registered_model: str | None = None
    version: str | None = None
    run_id: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    key_params: dict[str, object] | None = None  # the catalogue's settings off the defaults (records keep them)
    # Measured predict cost (seconds per row, `predict_cost_per_row`): evidence, not content. It is
    # in neither the fingerprint nor the config hash, so timing noise never makes a new version.
    predict_seconds_per_row: float = 0.0

    def fitted(self) -> Pipeline:
        """The fitted pipeline, failing clearly on a record (whose model lives in the registry)."""
        if self.pipeline is None:
            raise ValueError(f"member {self.name} is a record without its fitted pipeline; load version "
                             f"{self.version} of {self.registered_model} from the registry")
        return self.pipeline

    def record(self) -> MemberFit:
        """The fit without the fitted model: predictions, metrics and registry coordinates (a few
        arrays of one float per row), what asset values and the ensemble stage carry."""
        if self.pipeline is None:
            return self
        return dataclasses.replace(self, pipeline=None, key_params=key_params(self.pipeline))


def member_fingerprint(name: str, definition: dict[str, str], split: TrainHoldoutSplit, seed: int) -> str:
    payload = json.dumps(
        {"member": name, "definition": definition, "train_hash": split.train_hash, "seed": seed,
         "folds": split.fold_of_row.tolist(), "code_version": __version__},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def positive_proba(model, X) -> np.ndarray:
    """Probability of the positive class (label 1), failing clearly for models without it."""
    if not hasattr(model, "predict_proba"):
        raise TypeError(f"{type(model).__name__} cannot predict probabilities (no predict_proba)")
    classes = list(getattr(model, "classes_", [0, 1]))
    return fast_predict_proba(model, X)[:, classes.index(1)]


def fold_progress(name: str, k: int, n_folds: int, rows_fitted: int, elapsed: float) -> str:
    """`member x: fold k of K done (12.3s, 8,100 rows/s, ETA 49s)`: rows/s counts the rows fitted
    so far; the ETA assumes the remaining folds and the refit on all rows (about one fold and a
    quarter at 5 folds) go at the same rate."""
    rate = rows_fitted / elapsed if elapsed > 0 else float("inf")
    remaining_rows = rows_fitted / k * (n_folds - k) + rows_fitted / k * n_folds / max(n_folds - 1, 1)
    eta = remaining_rows / rate if rate not in (0, float("inf")) else 0.0
    return f"member {name}: fold {k} of {n_folds} done ({elapsed:.1f}s, {rate:,.0f} rows/s, ETA {eta:.0f}s)"


def fitted(template, X, y) -> Pipeline:
    """A clone of `template` fitted on (X, y) with one BLAS thread (`threads.single_threaded_blas`:
    faster on small products and the same bits on any machine), set to predict on one thread."""
    with single_threaded_blas():
        model = clone(template).fit(X, y)
    return predict_single_threaded(model)


def out_of_fold_proba(template, split: TrainHoldoutSplit, name: str, log: ProgressLog = null_log) -> np.ndarray:
    """One probability per training row, each from a clone of `template` fitted on the other
    shared folds (so no row's own label reaches its prediction)."""
    X_train, y_train = split.X_train(), split.y_train
    oof = np.full(len(X_train), np.nan)
    started = time.perf_counter()
    folds = split.folds()
    for k, (fit_rows, predict_rows) in enumerate(folds, start=1):
        model = fitted(template, X_train.iloc[fit_rows], y_train[fit_rows])
        oof[predict_rows] = positive_proba(model, X_train.iloc[predict_rows])
        log.info(fold_progress(name, k, len(folds), len(fit_rows) * k, time.perf_counter() - started))
    return oof


COST_TIMING_ROWS = 2048  # training rows timed per repeat (all of them when fewer)
COST_TIMING_REPEATS = 3  # the fastest repeat counts: the least disturbed by other work


def predict_cost_per_row(model, X, rows: int = COST_TIMING_ROWS, repeats: int = COST_TIMING_REPEATS) -> float:
    """Seconds per row of `positive_proba` on (up to `rows` of) the training rows, best of `repeats`."""
    sample = X.iloc[: min(rows, len(X))]
    if len(sample) == 0:
        return 0.0
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        positive_proba(model, sample)
        best = min(best, time.perf_counter() - started)
    return best / len(sample)


def fit_member(name: str, split: TrainHoldoutSplit, seed: int, log: ProgressLog = null_log) -> MemberFit:
    spec = get_member_spec(name)
    # Bounded above SCALE_ROWS training rows (`members.scale`); the definition records the bounds.
    template = bounded_for_rows(name, spec.build(split.schema, seed), len(split.y_train), seed)
    started = time.perf_counter()
    oof = out_of_fold_proba(template, split, name, log)
    X_train = split.X_train()
    final = fitted(template, X_train, split.y_train)
    holdout = positive_proba(final, split.X_holdout())
    elapsed = time.perf_counter() - started
    log.info(f"member {name}: refit on all {len(X_train)} training rows done ({elapsed:.1f}s)")
    params = model_params(template)  # as fitted (before prediction went single-threaded)
    definition = pipeline_definition(template)
    return MemberFit(
        name=name,
        family=spec.family,
        pipeline=final,
        oof_proba=oof,
        holdout_proba=holdout,
        oof_metrics=binary_metrics(split.y_train, oof),
        params=params,
        definition=definition,
        fit_seconds=elapsed,
        train_hash=split.train_hash,
        fingerprint=member_fingerprint(name, definition, split, seed),
        predict_seconds_per_row=predict_cost_per_row(final, X_train),
    )
