"""Adopting a registered member version the platform did not train in this run: one retrained
by the platform earlier, or one registered from outside (a data scientist's notebook).

The ensemble may only use a version whose holdout predictions are honest and whose out-of-fold
predictions can be made on the shared folds. So a version must carry the lineage tag
`ensemble_platform.train_hash` equal to the current training split's hash (it was fitted on the
training rows only, never on the holdout), predict probabilities for classes {0, 1}, and be a
scikit-learn estimator that can be cloned. Its out-of-fold predictions come from clones fitted
on the shared folds; its holdout predictions from the registered model itself.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
from sklearn.base import clone

from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.errors import LineageError
from ensemble_platform.evaluation.metrics import binary_metrics
from ensemble_platform.logging_utils import ProgressLog, null_log
from ensemble_platform.members.catalogue import model_params, pipeline_definition, predict_single_threaded
from ensemble_platform.members.training import MemberFit, out_of_fold_proba, positive_proba, predict_cost_per_row
from ensemble_platform.tags import FAMILY_TAG, FINGERPRINT_TAG, TRAIN_HASH_TAG


def lineage_problems(model: object, tags: dict[str, str], train_hash: str) -> list[str]:
    """Why this registered version cannot join the ensemble (empty when it can)."""
    problems = []
    recorded = tags.get(TRAIN_HASH_TAG)
    if not recorded:
        problems.append(f"it has no {TRAIN_HASH_TAG} tag, so nothing shows it was trained without the holdout "
                        f"(tag it with the current training split's hash {train_hash[:12]}...)")
    elif recorded != train_hash:
        problems.append(f"it was trained on training split {recorded[:12]}, not the current one {train_hash[:12]}")
    if not hasattr(model, "predict_proba"):
        problems.append(f"it cannot predict probabilities ({type(model).__name__} has no predict_proba), so "
                        "no out-of-fold probabilities can be made for the combiner")
    elif hasattr(model, "classes_") and sorted(np.asarray(model.classes_).tolist()) != [0, 1]:
        problems.append(f"its classes are {np.asarray(model.classes_).tolist()}, not [0, 1]")
    try:
        clone(model)
    except Exception as exc:
        problems.append(f"it cannot be cloned to refit on the shared folds ({type(exc).__name__}: {exc})")
    return problems


def adopt_member(
    name: str, model: object, tags: dict[str, str], registered_model: str, version: str, run_id: str,
    split: TrainHoldoutSplit, log: ProgressLog = null_log,
) -> MemberFit:
    """The MemberFit of a registered version: out-of-fold from clones, holdout from the model."""
    label = f"version {version} of {registered_model}"
    problems = lineage_problems(model, tags, split.train_hash)
    if problems:
        raise LineageError(f"{label} cannot join the ensemble: " + "; ".join(problems))
    started = time.perf_counter()
    try:
        oof = out_of_fold_proba(clone(model), split, name, log)
        holdout = positive_proba(predict_single_threaded(model), split.X_holdout())
    except Exception as exc:
        raise LineageError(f"{label} cannot be refitted or scored on the dataset's feature columns "
                           f"{split.schema.features}: {type(exc).__name__}: {exc}") from exc
    definition = pipeline_definition(model)
    fingerprint = tags.get(FINGERPRINT_TAG) or hashlib.sha256(
        json.dumps({"member": name, "definition": definition, "registered": f"{registered_model}/{version}"},
                   sort_keys=True).encode()).hexdigest()
    log.info(f"member {name}: adopted {label} ({time.perf_counter() - started:.1f}s)")
    return MemberFit(
        name=name, family=tags.get(FAMILY_TAG, "registered from outside the catalogue"), pipeline=model,
        oof_proba=oof, holdout_proba=holdout, oof_metrics=binary_metrics(split.y_train, oof),
        params=model_params(model), definition=definition, fit_seconds=time.perf_counter() - started,
        train_hash=split.train_hash, fingerprint=fingerprint,
        registered_model=registered_model, version=str(version), run_id=run_id,
        predict_seconds_per_row=predict_cost_per_row(model, split.X_train()),  # measured here, as at fit
    )
