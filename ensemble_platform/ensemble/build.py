"""Turn the chosen candidate into a versioned ensemble config and its runtime.

The post-hoc calibrator is chosen and fitted here, on the chosen strategy's cross-validated
out-of-fold probabilities: the holdout is not an input, so it cannot shape the calibrator.
Members the chosen combiner gives no say are pruned from the served runtime (`ensemble.pruning`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import cloudpickle

from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.ensemble.calibrators import CalibrationChoice, select_calibrator
from ensemble_platform.ensemble.config import EnsembleConfig, MemberRef, PrunedMember, next_version
from ensemble_platform.ensemble.predictions import MemberPredictions
from ensemble_platform.ensemble.pruning import prune_reason, restricted, used_columns
from ensemble_platform.ensemble.runtime import EnsembleRuntime, RegisteredMember
from ensemble_platform.ensemble.selection import CandidateSet
from ensemble_platform.errors import PlatformError
from ensemble_platform.members.training import MemberFit
from ensemble_platform.policy import GovernancePolicy
from ensemble_platform.threads import single_threaded_math

# Loads the fitted models of the served members (the registry's artefacts, in the Dagster layer).
ModelLoader = Callable[[list[MemberRef]], dict[str, object]]


@dataclass
class EnsembleBuild:
    config: EnsembleConfig
    runtime: EnsembleRuntime
    calibration: CalibrationChoice

    def document(self) -> EnsembleBuild:
        """The build without the fitted members (the runtime keeps combiner, calibrator, schema and
        thresholds): what the `ensemble_config` asset stores. The members are registry artefacts,
        loaded only where scoring happens; reports work from the stored probability matrices."""
        return replace(self, runtime=replace(self.runtime, members=member_references(self.runtime.members)))


def member_references(members: Iterable[str | MemberRef]) -> dict[str, object]:
    """The served members by name, in order, without their fitted models (`RegisteredMember`): what
    a runtime needs to be registered (artefacts copied) or to score stored probabilities. Also a
    `ModelLoader` that loads nothing."""
    names = [m if isinstance(m, str) else m.name for m in members]
    return {name: RegisteredMember(name) for name in names}


def build_ensemble(
    candidates: CandidateSet,
    predictions: MemberPredictions,
    fits: Mapping[str, MemberFit] | None,
    split: TrainHoldoutSplit,
    previous: EnsembleConfig | None,
    governance: GovernancePolicy = GovernancePolicy(),
    load_models: ModelLoader | None = None,
) -> EnsembleBuild:
    """The versioned config and its runtime. The served members' fitted models come from
    `load_models` (only the served ones are loaded) or else from `fits`. The members' measured costs
    (`candidates.member_costs`) go into the config as evidence, not content."""
    if len(predictions.members) < governance.min_members:
        raise PlatformError(
            f"ensemble of {split.dataset} has {len(predictions.members)} member(s); the spec's "
            f"governance.min_members requires at least {governance.min_members}"
        )
    chosen = candidates.chosen_evidence
    with single_threaded_math():
        calibration = select_calibrator(chosen.cv_proba, split.y_train, split.fold_of_row)
    columns = used_columns(chosen.combiner)
    combiner = restricted(chosen.combiner, columns)
    served = [predictions.members[j] for j in columns]
    reason = prune_reason(chosen.combiner, chosen.name)
    pruned = tuple(PrunedMember(**m.model_dump(), reason=reason)
                   for j, m in enumerate(predictions.members) if j not in columns)
    draft = EnsembleConfig(
        dataset=split.dataset,
        strategy=chosen.name,
        members=tuple(served),
        pruned=pruned,
        combiner=combiner.describe(),
        combiner_sha256=hashlib.sha256(cloudpickle.dumps(combiner)).hexdigest(),
        selection_criterion=candidates.criterion,
        calibration=calibration.describe(),
        governance=governance,
        data_hash=split.data_hash,
        selection=candidates.selection,
        member_costs=dict(zip(predictions.names, candidates.member_costs)),
        expected_cost_per_row=chosen.cost_per_row,
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
        members=_served_models(served, fits, load_models),
        combiner=combiner,
        calibrator=calibration.calibrator,
        agreement_threshold=governance.agreement_threshold,
        decision_threshold=governance.decision_threshold,
        unseen_category=governance.unseen_category,
        max_missing_share=governance.max_missing_share,
    )
    return EnsembleBuild(config, runtime, calibration)


def _served_models(served: list[MemberRef], fits: Mapping[str, MemberFit] | None,
                   load_models: ModelLoader | None) -> dict:
    if load_models is not None:
        models = load_models(served)
        return {m.name: models[m.name] for m in served}
    if fits is None:
        raise PlatformError("build_ensemble needs the members' fits or a loader of their registered models")
    return {m.name: fits[m.name].fitted() for m in served}
