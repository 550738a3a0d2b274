"""Policy: every block of a dataset spec that sets a threshold or a rule (ground floor: imports
nothing of the project).

Governance thresholds are the settings a reviewer's verdicts are judged against.

They live in the dataset spec's optional `governance:` block (defaults below) and are copied
into every ensemble config, so changing a threshold changes the config hash and yields a new
ensemble version that needs its own review.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Status = Literal["pass", "warn", "fail", "thin"]
STATUS_ORDER: tuple[str, ...] = ("pass", "thin", "warn", "fail")  # worst last


class GapThreshold(BaseModel):
    """Warn and fail limits for one fairness gap.

    `higher_is_worse` gaps (differences) warn when value > warn and fail when value > fail;
    ratios (lower is worse) warn when value < warn and fail when value < fail.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    warn: float = Field(ge=0.0)
    fail: float = Field(ge=0.0)
    higher_is_worse: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> GapThreshold:
        if self.higher_is_worse and self.fail < self.warn:
            raise ValueError(f"fail ({self.fail}) must be >= warn ({self.warn}) for a difference")
        if not self.higher_is_worse and self.fail > self.warn:
            raise ValueError(f"fail ({self.fail}) must be <= warn ({self.warn}) for a ratio")
        return self

    def status(self, value: float) -> Status:
        if self.higher_is_worse:
            return "fail" if value > self.fail else "warn" if value > self.warn else "pass"
        return "fail" if value < self.fail else "warn" if value < self.warn else "pass"


class FairnessPolicy(BaseModel):
    """Gap thresholds and the sample sizes below which a group is too thin to judge.

    Defaults follow common practice: the four-fifths rule for the parity ratio and 0.1 / 0.2
    for absolute rate differences.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    demographic_parity_difference: GapThreshold = GapThreshold(warn=0.1, fail=0.2)
    demographic_parity_ratio: GapThreshold = GapThreshold(warn=0.8, fail=0.6, higher_is_worse=False)
    equalized_odds_difference: GapThreshold = GapThreshold(warn=0.1, fail=0.2)
    equal_opportunity_difference: GapThreshold = GapThreshold(warn=0.1, fail=0.2)
    # A group with fewer rows, or fewer rows of either class, is reported but not judged.
    min_group_size: int = Field(default=30, ge=1)
    min_group_class_count: int = Field(default=5, ge=1)

    def gap_thresholds(self) -> dict[str, GapThreshold]:
        return {
            "demographic_parity_difference": self.demographic_parity_difference,
            "demographic_parity_ratio": self.demographic_parity_ratio,
            "equalized_odds_difference": self.equalized_odds_difference,
            "equal_opportunity_difference": self.equal_opportunity_difference,
        }


class GatePolicy(BaseModel):
    """Thresholds of the automated release gates (see `governance.gates`).

    Log-loss tolerances are in nats per row: how much worse than the best single member the
    ensemble may be before the gate fails (an ensemble that loses to one of its own members is
    complexity without benefit).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    oof_log_loss_tolerance: float = Field(default=0.005, ge=0.0)
    holdout_log_loss_tolerance: float = Field(default=0.01, ge=0.0)
    max_ece: float = Field(default=0.05, gt=0.0, le=1.0)
    # Below 0.5 almost no decision is routed to review: the review safeguard would be off.
    min_agreement_threshold: float = Field(default=0.5, ge=0.0, le=1.0)


# What the runtime does with a categorical value no member saw in training: score it and route the
# row to human review (default), refuse the row with an error, or score it silently.
UnseenCategoryPolicy = Literal["review", "error", "ignore"]


class GovernancePolicy(BaseModel):
    """Everything in a dataset spec's `governance:` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Rows whose member vote share for the ensemble's decision falls below this go to review.
    agreement_threshold: float = Field(default=0.6, gt=0.0, le=1.0)
    min_members: int = Field(default=2, ge=1)
    decision_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    calibration_bins: int = Field(default=10, ge=2, le=100)
    unseen_category: UnseenCategoryPolicy = "review"
    # A row missing more than this share of its features is scored (members impute) but routed to review.
    max_missing_share: float = Field(default=0.5, ge=0.0, le=1.0)
    fairness: FairnessPolicy = FairnessPolicy()
    gates: GatePolicy = GatePolicy()


class SelectionPolicy(BaseModel):
    """The spec's optional `selection:` block: choose the strategy on an accuracy-cost frontier.

    Absent, the platform's rule stands (the simplest of the fixed-cost strategies within fold noise of
    the best, see `ensemble.selection`). Present, every candidate (cascade and router included)
    whose expected out-of-fold predict cost per row is at most `max_cost_ratio` x the cheapest
    member's is eligible, and the same noise rule on `objective` chooses among those.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    objective: Literal["log_loss", "brier", "roc_auc"] = "log_loss"
    # Budget: expected cost per row relative to the cheapest member (1.0 = one cheapest member); null: none.
    max_cost_ratio: float | None = Field(default=None, ge=1.0)
    # How much worse (log loss, nats per row) than the full ensemble a cascade's exit bands and a
    # router's fallback confidence may make it, out of fold.
    cost_tolerance: float = Field(default=0.002, ge=0.0)


def worst_status(statuses: list[str]) -> str:
    """The most severe of several statuses ('pass' when there are none)."""
    return max(statuses, key=STATUS_ORDER.index, default="pass")


class DriftPolicy(BaseModel):
    """When a new data batch counts as drifted enough to retrain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Share of feature columns whose distribution drifted (Evidently's per-column tests).
    max_drifted_share: float = Field(default=0.3, gt=0.0, le=1.0)
    # Drift of the production ensemble's predicted probability triggers on its own.
    prediction_drift_triggers: bool = True
    # Drift of the label distribution (batches that carry labels) triggers on its own.
    target_drift_triggers: bool = True
    # Batches with fewer rows are validated and reported, but never trigger a retraining.
    min_rows: int = Field(default=30, ge=1)
    # Evidently's per-column tests. Two-sample p-value tests by default: they account for the
    # batch size, where Evidently's size-based default (normed Wasserstein / Jensen-Shannon distance
    # once the reference has 1,000 rows) flagged 1-4 of 11 unshifted columns in 300-row samples of
    # credit_data's own holdout. Any Evidently stattest name works ("wasserstein", "psi", ...).
    num_method: str = "ks"
    cat_method: str = "chisquare"
    # The tests' threshold (p-value for p-value tests); None: Evidently's default for the method.
    column_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    # Effect-size floors: a column (and the prediction, and the target) counts as drifted only when
    # its test rejects AND its effect size reaches the floor. On large batches a p-value test rejects
    # differences too small to matter (a 1M-row resample of the validated holdout had 4 of 11 columns
    # flagged). Numeric: Wasserstein distance in reference standard deviations (Evidently's normed
    # "wasserstein"); categorical: Jensen-Shannon distance of the category shares (natural log, 0 to
    # 0.83). 0.1 is Evidently's own default threshold for both; 0 turns a floor off.
    num_effect_floor: float = Field(default=0.1, ge=0.0)
    cat_effect_floor: float = Field(default=0.1, ge=0.0)


class AutomationPolicy(BaseModel):
    """The `automation:` block: what runs by itself for this dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Cron of the retraining schedule (default weekly, Monday 03:00); null: no schedule.
    retrain_cron: str | None = "0 3 * * 1"
    timezone: str = "UTC"
    drift: DriftPolicy = DriftPolicy()
    # Which accepted batches a retraining adds to the training data: those that carry labels, or none.
    include_batches: Literal["labelled", "none"] = "labelled"

    @field_validator("retrain_cron")
    @classmethod
    def _cron_has_five_fields(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError(f"must be a 5-field cron expression (minute hour day month weekday), got {value!r}")
        return value


class ShadowGatePolicy(BaseModel):
    """What production needs from a candidate's shadow scoring (`serve --shadow`) before promotion.
    Off by default: with both limits null, no shadow evidence is required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The candidate must have shadowed production for at least this many days (null: not required).
    min_days: float | None = Field(default=None, ge=0.0)
    # ... and on at least this many production decisions (counted when a limit above is set).
    min_decisions: int = Field(default=100, ge=1)
    # Share of shadowed decisions whose class the candidate flips (null: no ceiling).
    max_flip_rate: float | None = Field(default=None, ge=0.0, le=1.0)

    @property
    def required(self) -> bool:
        return self.min_days is not None or self.max_flip_rate is not None


class OperationsPolicy(BaseModel):
    """The `operations:` block: the review queue's SLA and the production alerts read from the decision log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # An item open longer than this breaches the review SLA.
    review_sla_hours: float = Field(default=24.0, gt=0.0)
    # A stored feature whose value names a queue item's segment (filters, and "segments most often
    # sent to review"); null: no segments.
    segment_column: str | None = None
    # Alert when a day's mean agreement falls below the validated holdout's by more than this.
    agreement_drop: float = Field(default=0.05, gt=0.0, le=1.0)
    # Alert when a day's share of fallback (degraded) decisions exceeds this.
    max_fallback_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    # Alert when a day's share of refused requests exceeds this.
    max_refusal_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    # Alert when more than this many queue items are past the SLA.
    max_sla_breaches: int = Field(default=0, ge=0)
    # Days with fewer decisions are reported, never alerted on.
    min_daily_decisions: int = Field(default=30, ge=1)
    shadow: ShadowGatePolicy = ShadowGatePolicy()


class ColumnsPolicy(BaseModel):
    """The spec's `columns:` block: how the training table's columns are profiled and what a new
    batch may depart from. It does not change ensemble versions (only what the members are fitted
    on does, through the data and schema)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A feature more empty than this in the training rows fails the blocking data check (1.0: none
    # does); drop it (`drop`, `drop_missing_above`) or raise this to train with it.
    max_missing_share: float = Field(default=0.95, ge=0.0, le=1.0)
    # A feature more empty than this in the training rows is reported as mostly empty (and kept).
    report_missing_above: float = Field(default=0.5, ge=0.0, le=1.0)
    # A feature more empty than this in the training rows is not used (dropped with the reason);
    # null keeps every column that has at least one value.
    drop_missing_above: float | None = Field(default=None, ge=0.0, lt=1.0)
    # A batch column's missing share may depart from its training share by this much (either
    # way), plus three standard errors of a share measured on the batch's rows.
    missing_tolerance: float = Field(default=0.2, ge=0.0, le=1.0)
