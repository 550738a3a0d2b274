"""Production performance: the serving ensemble and its members on the labelled decisions of the decision log
(registered outcomes, else reviewers' resolutions), per day and overall, with reviewer-vs-ensemble agreement.
One unpartitioned asset for the run's dataset; each materialisation is one point of the overall figures (the UI
plots them across materialisations) and the report draws the daily history."""

import dagster as dg

from ensemble_platform.decisions.log import decision_log_exists, open_decision_store
from ensemble_platform.decisions.outcomes import labelled_decisions
from ensemble_platform.decisions.production_performance import production_performance as performance_of
from ensemble_platform.defs.owners import owners
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.governance.production_report import write_production_report
from ensemble_platform.governance.rendering import md_table

GROUP = "monitoring"


@dg.asset(group_name=GROUP, owners=owners(GROUP), kinds={"sqlite"})
def production_performance(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.Output[dict]:
    """ROC AUC, log loss, ECE and accuracy at the decision threshold of the ensemble and each member on the
    dataset's labelled production decisions, per UTC day and overall; reviewer agreement with the ensemble.
    Report: `reports/<dataset>/monitoring/production/production_performance.html`."""
    spec = platform.spec()
    rows = []
    if decision_log_exists(platform.paths):  # no decision log yet: nothing labelled, and none is created
        store = open_decision_store(platform.paths)
        try:
            rows = labelled_decisions(store, spec.name)
        finally:
            store.close()
    performance = performance_of(rows, spec.name, spec.governance.calibration_bins)
    written = write_production_report(platform.paths, performance)
    context.log.info(f"{spec.name}: {performance.overall.labelled} labelled production decision(s) over "
                     f"{len(performance.days)} day(s)")
    daily = md_table(["day", "labelled", "ensemble accuracy", "ensemble log loss", "reviewer agreement"],
                     [[d.period, d.labelled, d.ensemble.accuracy, d.ensemble.log_loss, d.review.agreement]
                      for d in performance.days])
    return dg.Output(performance.model_dump(mode="json"), metadata={
        "dataset": spec.name,
        **performance.point(),
        "days": len(performance.days),
        "daily": dg.MetadataValue.md(daily),
        "daily_series": dg.MetadataValue.json([{"day": d.period, "labelled": d.labelled,
                                                 "ensemble_accuracy": d.ensemble.accuracy,
                                                 "ensemble_roc_auc": d.ensemble.roc_auc,
                                                 "ensemble_log_loss": d.ensemble.log_loss,
                                                 "ensemble_ece": d.ensemble.ece,
                                                 "review_agreement": d.review.agreement} for d in performance.days]),
        "report": dg.MetadataValue.path(str(written["html"])),
    })
