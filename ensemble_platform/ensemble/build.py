"""Turn the chosen candidate into a versioned ensemble config and its runtime."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cloudpickle

from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.ensemble.config import DEFAULT_AGREEMENT_THRESHOLD, EnsembleConfig, next_version
from ensemble_platform.ensemble.predictions import MemberPredictions
from ensemble_platform.ensemble.selection import CandidateSet
from ensemble_platform.members.training import MemberFit
from ensemble_platform.serving.runtime import EnsembleRuntime


@dataclass
class EnsembleBuild:
    config: EnsembleConfig
    runtime: EnsembleRuntime


def build_ensemble(
    candidates: CandidateSet,
    predictions: MemberPredictions,
    fits: dict[str, MemberFit],
    split: TrainHoldoutSplit,
    previous: EnsembleConfig | None,
    agreement_threshold: float = DEFAULT_AGREEMENT_THRESHOLD,
    min_members: int = 2,
) -> EnsembleBuild:
    chosen = candidates.chosen_evidence
    draft = EnsembleConfig(
        dataset=split.dataset,
        strategy=chosen.name,
        members=tuple(predictions.members),
        combiner=chosen.combiner.describe(),
        combiner_sha256=hashlib.sha256(cloudpickle.dumps(chosen.combiner)).hexdigest(),
        selection_criterion=candidates.criterion,
        agreement_threshold=agreement_threshold,
        min_members=min_members,
        data_hash=split.data_hash,
    )
    config = draft.model_copy(update={"version": next_version(previous, draft)})
    if previous is not None and previous.config_hash == config.config_hash:
        # Unchanged: keep where the previous one was registered.
        config = config.model_copy(update={"registered_model": previous.registered_model,
                                           "registered_version": previous.registered_version})
    runtime = EnsembleRuntime(
        dataset=split.dataset,
        version=config.version,
        schema=split.schema,
        members={name: fits[name].pipeline for name in predictions.names},
        combiner=chosen.combiner,
        agreement_threshold=agreement_threshold,
    )
    return EnsembleBuild(config, runtime)
