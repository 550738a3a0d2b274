"""Prometheus metrics of one app, in its own `CollectorRegistry` (several apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ensemble_platform.decisions.queue import QueueItem, SlaStatus
from ensemble_platform.serving.decider import DecisionBatch

PREFIX = "ensemble_service"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
AGREEMENT_BUCKETS = (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0)
RESOLUTION_BUCKETS = tuple(h * 3600.0 for h in (0.25, 0.5, 1, 2, 4, 8, 12, 24, 48, 72, 168))


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.decisions = Counter(f"{PREFIX}_decisions", "Rows decided, by outcome (positive, negative, refused)",
                                 ["outcome"], registry=r)
        self.request_seconds = Histogram(f"{PREFIX}_request_duration_seconds", "End-to-end request latency",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.member_seconds = Histogram(f"{PREFIX}_member_duration_seconds", "Per-member scoring latency per request",
                                        ["member"], buckets=LATENCY_BUCKETS, registry=r)
        self.member_failures = Counter(f"{PREFIX}_member_failures", "Rows a member was excluded from, by reason "
                                       "(exception, timeout, non_finite, out_of_range, bad_shape, excluded)",
                                       ["member", "reason"], registry=r)
        self.degraded = Counter(f"{PREFIX}_degraded_decisions", "Decisions made without every member", registry=r)
        self.fallbacks = Counter(f"{PREFIX}_fallbacks", "Decisions combined by the majority-vote fallback",
                                 ["reason"], registry=r)
        self.refusals = Counter(f"{PREFIX}_refusals", "Requests refused: fewer working members than min_members",
                                registry=r)
        self.agreement = Histogram(f"{PREFIX}_agreement", "Share of voting members agreeing with the decision",
                                   buckets=AGREEMENT_BUCKETS, registry=r)
        self.review = Counter(f"{PREFIX}_review_routed", "Decisions routed to human review, by reason", ["reason"],
                              registry=r)
        self.log_write_seconds = Histogram(f"{PREFIX}_decision_log_write_seconds", "Submit-to-durable latency of "
                                           "a request's records", buckets=WRITE_BUCKETS, registry=r)
        self.log_failures = Counter(f"{PREFIX}_decision_log_failures", "Requests whose records could not be written "
                                    "(answered 503)", registry=r)
        self.queue_depth = Gauge(f"{PREFIX}_review_queue_depth", "Review items not yet resolved, by status",
                                 ["status"], registry=r)
        self.queue_oldest = Gauge(f"{PREFIX}_review_oldest_open_age_seconds", "Age of the oldest unresolved review "
                                  "item (0 when none)", registry=r)
        self.queue_past_sla = Gauge(f"{PREFIX}_review_past_sla", "Unresolved review items older than the SLA",
                                    registry=r)
        self.queue_breached = Gauge(f"{PREFIX}_review_sla_breached", "1 while any review item is past the SLA",
                                    registry=r)
        self.queue_sla = Gauge(f"{PREFIX}_review_sla_seconds", "The review SLA", registry=r)
        self.resolution_seconds = Histogram(f"{PREFIX}_review_resolution_seconds", "Time from a decision to its "
                                            "review's resolution (resolutions through this service)",
                                            buckets=RESOLUTION_BUCKETS, registry=r)
        self.auth_disabled = Gauge(f"{PREFIX}_auth_disabled", "1 when the service runs with --no-auth", registry=r)

    def observe_batch(self, batch: DecisionBatch) -> None:
        for name, seconds in batch.member_seconds.items():
            self.member_seconds.labels(name).observe(seconds)
        for row in batch.rows:
            self.decisions.labels("positive" if row.decision else "negative").inc()
            self.agreement.observe(row.agreement)
            for name, member in row.members.items():
                if member.reason:
                    self.member_failures.labels(name, member.reason).inc()
            if row.degraded:
                self.degraded.inc()
            if row.fallback_reason:
                self.fallbacks.labels(row.fallback_reason.split(":", 1)[0]).inc()
            for reason in row.review_reasons:
                self.review.labels(reason).inc()

    def observe_refusal(self, rows: int, members: dict[str, str | None]) -> None:
        self.refusals.inc()
        self.decisions.labels("refused").inc(rows)
        for name, reason in members.items():
            if reason:
                self.member_failures.labels(name, reason).inc()

    def observe_queue(self, sla: SlaStatus) -> None:
        """Set the queue gauges (called at scrape time: the queue is shared with the CLI)."""
        self.queue_depth.labels("open").set(sla.open)
        self.queue_depth.labels("claimed").set(sla.claimed)
        self.queue_oldest.set(sla.oldest_open_age_s or 0.0)
        self.queue_past_sla.set(sla.past_sla)
        self.queue_breached.set(1 if sla.breached else 0)
        self.queue_sla.set(sla.sla_hours * 3600)

    def observe_resolution(self, item: QueueItem) -> None:
        seconds = item.resolution_seconds()
        if seconds is not None:
            self.resolution_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
