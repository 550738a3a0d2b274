"""The daily decision-log report of one dataset: `decisions.daily`'s numbers as JSON, Markdown and one
self-contained HTML page, under `reports/<dataset>/monitoring/decisions/<day>/`.

The agreement of each ensemble version's decisions is judged against that version's validated baseline:
the agreement report published with it (`reports/<dataset>/<version>/agreement.json`, the holdout's
`vote_share.mean` and `vote_share.levels`). Every value from the log (versions, members, segments,
reasons) is rendered inert: table cells through `md_table`, running text through `md_text`.
"""

from __future__ import annotations

import io
import json
from datetime import date, datetime
from pathlib import Path
from typing import Final

from matplotlib.figure import Figure as MplFigure

from ensemble_platform.decisions.daily import (
    AgreementBaseline,
    DailySummary,
    VersionAgreement,
    daily_summary,
    day_entries,
    level_key,
)
from ensemble_platform.decisions.log import DecisionLog, decision_log_exists
from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.figures import plain_text
from ensemble_platform.governance.rendering import (
    Figure,
    ReportDocument,
    Section,
    fmt,
    md_table,
    md_text,
    percent,
    write_report,
)
from ensemble_platform.policy import OperationsPolicy
from ensemble_platform.settings import PlatformPaths

STEM: Final = "decisions"
BASELINE_FILE: Final = "agreement.json"  # the agreement report of a version (governance.reports, stem "agreement")


class BaselineError(PlatformError):
    """A version's agreement report exists but lacks what the baseline needs."""


def report_dir(paths: PlatformPaths, dataset: str, day: date | str) -> Path:
    return paths.monitoring_dir(dataset) / "decisions" / str(day)


def baseline_path(paths: PlatformPaths, dataset: str, version: str) -> Path:
    return paths.version_reports_dir(dataset, version) / BASELINE_FILE


def read_baseline(paths: PlatformPaths, dataset: str, version: str) -> AgreementBaseline | None:
    """The validated agreement of `version` (None when the version has no agreement report in this home)."""
    path = baseline_path(paths, dataset, version)
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
        vote_share = report["vote_share"]
        levels = {level_key(float(level["vote_share"])): float(level["share"]) for level in vote_share["levels"]}
        return AgreementBaseline(
            ensemble_version=version, mean=float(vote_share["mean"]), review_share=report.get("review", {}).get("share"),
            review_threshold=report.get("review_threshold"), levels=levels, source=str(path))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BaselineError(f"agreement report {path} cannot serve as the baseline of {version}: field "
                            f"vote_share.mean / vote_share.levels[].vote_share|share missing or not a number "
                            f"({type(exc).__name__}: {exc})") from exc


class Baselines:
    """Version -> baseline lookup for `daily_summary`, reading each version's report once."""

    def __init__(self, paths: PlatformPaths, dataset: str):
        self.paths, self.dataset = paths, dataset
        self._read: dict[str, AgreementBaseline | None] = {}
        self.problems: list[str] = []

    def __call__(self, version: str) -> AgreementBaseline | None:
        """The baseline, or None: a report that cannot serve costs that version its agreement-drift check
        only (noted), never the day's other alerts (fallbacks, refusals, the review SLA)."""
        if version not in self._read:
            try:
                self._read[version] = read_baseline(self.paths, self.dataset, version)
            except BaselineError as exc:
                self._read[version] = None
                self.problems.append(f"{exc}; the agreement of {version} is not compared with its validation "
                                     "until the report is rebuilt")
        return self._read[version]


def summarise_day(paths: PlatformPaths, dataset: str, day: date, policy: OperationsPolicy,
                  now: datetime) -> DailySummary:
    """The day's summary from the home's decision log (an empty day when no log was ever written: reading
    never creates one)."""
    baselines = Baselines(paths, dataset)
    if not decision_log_exists(paths):
        summary = daily_summary([], day, dataset, baselines, policy, now)
    else:
        log = DecisionLog.for_home(paths)
        try:
            summary = daily_summary(day_entries(log, day, now), day, dataset, baselines, policy, now)
        finally:
            log.close()
    if baselines.problems:
        summary = summary.model_copy(update={"notes": [*summary.notes, *baselines.problems]})
    return summary


def publish_decision_report(paths: PlatformPaths, dataset: str, day: date, policy: OperationsPolicy,
                            now: datetime) -> tuple[DailySummary, dict[str, Path]]:
    """Summarise the day and write `decisions.{json,md,html}` (atomically) under `report_dir`."""
    summary = summarise_day(paths, dataset, day, policy, now)
    return summary, write_decision_report(paths, summary)


def write_decision_report(paths: PlatformPaths, summary: DailySummary) -> dict[str, Path]:
    return write_report(decision_document(summary), report_dir(paths, summary.dataset, summary.day), STEM,
                        summary.model_dump(mode="json"))


# --- the document ----------------------------------------------------------------------------

def decision_document(summary: DailySummary) -> ReportDocument:
    state = "complete day" if summary.complete else "day in progress"
    return ReportDocument(
        title=f"Decision log: {summary.dataset} on {summary.day}",
        subtitle=f"{summary.dataset} · {summary.day} (UTC, {state}) · as of {summary.as_of}",
        sections=[_summary_section(summary), _volume_section(summary), _agreement_section(summary),
                  _review_section(summary), _members_section(summary)],
    )


def _summary_section(summary: DailySummary) -> Section:
    if summary.alerts:
        lines = "\n".join(f"- **{a.kind}**: {md_text(a.message)}" for a in summary.alerts)
        text = f"**{len(summary.alerts)} alert(s)** under the dataset's `operations` policy:\n\n{lines}"
    elif summary.judged:
        text = "No alert: every figure is within the dataset's `operations` policy."
    else:
        text = "Not judged (too few decisions): no alert is raised on this day."
    notes = "".join(f"\n\n_{md_text(note)}_" for note in summary.notes)
    policy = summary.policy
    limits = md_table(["limit", "value"], [
        ["agreement drop below the validated baseline", policy.agreement_drop],
        ["fallback rate", policy.max_fallback_rate], ["refusal rate", policy.max_refusal_rate],
        ["review SLA (hours)", policy.review_sla_hours], ["SLA breaches", policy.max_sla_breaches],
        ["decisions needed to judge a day", policy.min_daily_decisions]])
    return Section("Summary", text + notes + "\n\n" + limits)


def _volume_section(summary: DailySummary) -> Section:
    volume, rates = summary.volume, summary.rates
    table = md_table(["figure", "value"], [
        ["decisions", volume.decisions], ["requests", volume.requests], ["refused requests", volume.refusals],
        ["refused rows", volume.refused_rows], ["review items", volume.review_items],
        ["review rate", percent(rates.review_rate)], ["degraded rate", percent(rates.degraded_rate)],
        ["fallback rate", percent(rates.fallback_rate)], ["unseen-category rate", percent(rates.unseen_category_rate)],
        ["refusal rate (of requests)", percent(rates.refusal_rate)]])
    return Section("Volume and rates", table)


def _agreement_section(summary: DailySummary) -> Section:
    rows = [[v.ensemble_version, v.decisions, v.mean, v.baseline_mean, v.drop, percent(v.low_agreement_share),
             percent(v.baseline_review_share), *(v.quantiles.get(f"p{q}") for q in (10, 50, 90))]
            for v in summary.agreement]
    table = md_table(["version", "decisions", "mean", "baseline mean", "drop", "low agreement", "baseline review",
                      "p10", "p50", "p90"], rows, digits=4)
    levels = "".join(
        f"\n\nVote shares of {md_text(v.ensemble_version)} (share of the day's decisions vs the validated holdout):"
        "\n\n" + md_table(["vote share", "decisions", "share", "baseline share"],
                          [[lv.vote_share, lv.decisions, percent(lv.share), percent(lv.baseline_share)]
                           for lv in v.levels], digits=3)
        for v in summary.agreement)
    text = ("Vote share: the share of voting members whose own vote matches the ensemble's decision. "
            "The baseline is the validated version's holdout (its agreement report); a drop is "
            "baseline mean − the day's mean.\n\n" + (table if rows else "No decisions on this day.") + levels)
    figures = [_levels_figure(i, v) for i, v in enumerate(summary.agreement) if v.levels]
    return Section("Agreement against the validated baseline", text, figures)


def _review_section(summary: DailySummary) -> Section:
    sla = summary.sla
    figures = md_table(["figure", "value"], [
        ["items opened", sla.items], ["resolved", sla.resolved], ["resolved within SLA", sla.resolved_within_sla],
        ["resolved late", sla.resolved_late], ["unresolved", sla.unresolved],
        ["unresolved past SLA", sla.unresolved_past_sla], ["SLA breaches", sla.breaches],
        ["median time to resolution (h)", sla.median_resolution_hours],
        ["p90 time to resolution (h)", sla.p90_resolution_hours]], digits=2)
    reasons = md_table(["reason", "items"], list(summary.review_reasons.items())) if summary.review_reasons else ""
    segments = md_table(
        ["segment", "review items", "share of reviews", "decisions", "review rate"],
        [[s.segment, s.review_items, percent(s.share_of_reviews), s.decisions, percent(s.review_rate)]
         for s in summary.top_segments]) if summary.top_segments else "No segmented review item on this day."
    return Section("Human review", (
        f"Items opened on the day against the {fmt(sla.sla_hours, 2)} h SLA, as of {md_text(sla.as_of)}.\n\n"
        + figures + ("\n\nReview reasons:\n\n" + reasons if reasons else "")
        + "\n\nSegments most often sent to review:\n\n" + segments))


def _members_section(summary: DailySummary) -> Section:
    rows = [[m.member, m.decisions, m.errors, percent(m.error_rate),
             ", ".join(f"{reason} {n}" for reason, n in m.reasons.items()) or "–"] for m in summary.members]
    return Section("Member errors", (
        "Decisions in which a member gave no probability (excluded for an exception, a timeout, a value "
        "out of range ...).\n\n" + (md_table(["member", "decisions", "errors", "error rate", "reasons"], rows)
                                    if rows else "No decisions on this day.")))


@plain_text
def _levels_figure(index: int, version: VersionAgreement) -> Figure:
    """Share of decisions per vote share, the day beside the validated holdout."""
    fig = MplFigure(figsize=(7, 3.2))
    ax = fig.subplots()
    labels = [f"{level.vote_share:.2f}" for level in version.levels]
    positions = range(len(labels))
    ax.bar([p - 0.2 for p in positions], [level.share for level in version.levels], width=0.4, label="this day")
    ax.bar([p + 0.2 for p in positions], [level.baseline_share or 0.0 for level in version.levels], width=0.4,
           label="validated holdout", color="#8c959f")
    ax.set_xticks(list(positions), labels=labels)
    ax.set_xlabel("share of voting members agreeing with the decision")
    ax.set_ylabel("share of decisions")
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, metadata={"Software": None}, bbox_inches="tight")
    return Figure(f"agreement_levels_{index}", f"Vote shares of {version.ensemble_version}: the day and the "
                                               f"validated holdout", buffer.getvalue())
