"""Monitoring documents: the performance of the serving ensemble and its members on labelled
batches over time, kept as one JSON per batch and rendered as one page with a chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, cast

from ensemble_platform.evaluation.batch_performance import PerformanceEntry
from ensemble_platform.files import write_json
from ensemble_platform.governance.figures import performance_history_figure
from ensemble_platform.governance.rendering import ReportDocument, Section, md_table, write_report
from ensemble_platform.settings import PlatformPaths

METRICS: tuple[Literal["accuracy", "roc_auc", "log_loss", "brier"], ...] = ("accuracy", "roc_auc", "log_loss", "brier")


class PerformanceHistory:
    def __init__(self, paths: PlatformPaths, dataset: str):
        self.dataset = dataset
        self.directory = paths.monitoring_dir(dataset) / "performance"

    def record(self, entry: PerformanceEntry) -> Path:
        return write_json(entry, self.directory / f"{entry['batch_id']}.json")

    def entries(self) -> list[PerformanceEntry]:
        """Every labelled batch's entry, in the order the batches were received."""
        if not self.directory.is_dir():
            return []
        # The files are the entries `record` wrote.
        entries = [cast(PerformanceEntry, json.loads(p.read_text())) for p in self.directory.glob("*.json")]
        return sorted(entries, key=lambda e: (e["received_at"], e["batch_id"]))

    def publish(self) -> dict[str, Path]:
        history = self.entries()
        rows = [[e["batch_id"], e["received_at"], e["scored_by"], e["performance"]["ensemble"]["rows"],
                 *(e["performance"]["ensemble"][m] for m in METRICS)] for e in history]
        # Every member any batch was scored with, each in its own column: the member set changes with
        # the version serving (a row listed its own members in order under the last batch's names).
        names = list(dict.fromkeys(k for e in history for k in e["performance"] if k != "ensemble"))
        members = [[e["batch_id"], *(f"{e['performance'][n]['accuracy']:.3f}" if n in e["performance"] else "—"
                                     for n in names)] for e in history]
        document = ReportDocument(
            f"Performance on labelled batches: {self.dataset}",
            f"{len(history)} labelled batch(es), scored by the version serving when each arrived",
            [Section("Ensemble", md_table(["batch", "received", "scored by", "rows", *METRICS], rows, digits=4),
                     [performance_history_figure(history, "accuracy")] if history else []),
             Section("Members (accuracy)", md_table(["batch", *names], members))],
        )
        return write_report(document, self.directory.parent, "performance")
