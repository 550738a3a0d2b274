"""The decision service's HTTP API (FastAPI).

    POST /v1/decisions              scope decide   rows -> decisions, each recorded before the answer
    POST /invocations               scope decide   MLflow scoring-server input/output, recorded the same way
    GET  /v1/decisions/{id}         scope read     a stored decision-log entry
    GET  /v1/reviews                scope review   the review queue, oldest first (?status= &reason= &segment= &limit=)
    GET  /v1/reviews/sla            scope review   queue depth, oldest open age, items past the SLA, resolution times
    GET  /v1/reviews/{id}           scope review   one item: reasons, the members' outputs, the stored input
    POST /v1/reviews/{id}/claim     scope review   {reviewer}: claim an open item
    POST /v1/reviews/{id}/release   scope review   {reviewer, note, force}: give a claim back
    POST /v1/reviews/{id}/resolve   scope review   {reviewer, decision, note}: the reviewer's outcome, next to the ensemble's
    GET  /health, /ready, /metrics                 liveness; readiness (bundle, log, auth mode); Prometheus

A decision routed to review is recorded with its queue item (submitted together, answered after both are
durable); claims and resolutions are appended to the same chain (`decisions.queue`).

Nothing is answered without a record: the response is sent only after the group-commit future of every
record of the request resolved (durable + checkpointed); a log that cannot be written answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ensemble_platform.decisions.log import DecisionLogLike
from ensemble_platform.decisions.queue import ReviewError, ReviewQueue
from ensemble_platform.decisions.records import DecisionRecord
from ensemble_platform.errors import DataError
from ensemble_platform.service.documents import (
    ClaimRequest,
    DecisionRequest,
    DecisionResponse,
    InvocationRequest,
    ReleaseRequest,
    ResolveRequest,
)
from ensemble_platform.service.metrics import ServiceMetrics
from ensemble_platform.service.recording import (
    Identity,
    decision_document,
    decision_records,
    default_store_columns,
    refusal_record,
    review_items,
)
from ensemble_platform.service.tokens import TokenError, TokenInfo, TokenStore
from ensemble_platform.serving.decider import Decider, DecisionInputError, RefusalError, jsonable_features

log = logging.getLogger("ensemble_platform.service")
NO_AUTH_WARNING = ("AUTHENTICATION DISABLED (--no-auth): every endpoint, deciding included, is open to anyone who "
                   "can reach this port")
CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


class ShadowLike(Protocol):
    """A candidate scoring the same requests off the response path (`service.shadow.ShadowScorer`):
    `submit` returns at once and never raises; `close` drains it."""

    def submit(self, rows: Sequence[Mapping[str, Any]], records: Sequence[DecisionRecord]) -> object: ...

    def stats(self) -> Any: ...

    def close(self) -> object: ...


class ServiceUnavailable(Exception):
    def __init__(self, detail: dict[str, Any]):
        self.detail = detail


@dataclass
class ServiceState:
    decider: Decider
    decision_log: DecisionLogLike
    tokens: TokenStore | None
    auth: bool
    identity: Identity
    store_columns: list[str]
    queue: ReviewQueue | None = None
    segment_column: str | None = None
    shadow: ShadowLike | None = None
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    bundle_path: str | None = None


def create_app(decider: Decider, decision_log: DecisionLogLike, tokens: TokenStore | None, *, auth: bool = True,
               manifest_sha256: str = "", store_columns: Sequence[str] | None = None,
               bundle_path: str | None = None, review_sla_hours: float = 24.0,
               segment_column: str | None = None, shadow: ShadowLike | None = None) -> FastAPI:
    """The app serving `decider`, recording into `decision_log`, authenticating against `tokens`.
    `store_columns`: input columns kept in each record (default: every feature but the sensitive ones);
    `segment_column`: the feature naming a review item's segment; `review_sla_hours`: the queue's SLA;
    `shadow`: a candidate scoring every decided request after it is recorded, off the response path."""
    if auth and tokens is None:
        raise ValueError("auth=True needs a token store")
    columns = list(store_columns) if store_columns is not None else default_store_columns(decider)
    unknown = sorted(set(columns) - set(decider.features))
    if unknown:
        raise ValueError(f"store_columns {unknown} are not features of the ensemble ({decider.features})")
    if segment_column is not None and segment_column not in decider.features:
        raise ValueError(f"segment_column {segment_column!r} is not a feature of the ensemble ({decider.features})")
    store = getattr(decision_log, "store", None)
    queue = ReviewQueue(store, sla_hours=review_sla_hours) if decision_log.enabled and store is not None else None
    state = ServiceState(decider, decision_log, tokens, auth, Identity.of(decider, manifest_sha256), columns,
                         queue=queue, segment_column=segment_column, shadow=shadow, bundle_path=bundle_path)
    state.metrics.auth_disabled.set(0 if auth else 1)
    if not auth:
        log.warning(NO_AUTH_WARNING)
    app = FastAPI(title="ensemble_platform decision service", version=decider.ensemble_version)
    app.state.service = state
    _install_handlers(app, state)
    _install_routes(app, state)
    return app


# --- plumbing -----------------------------------------------------------------------------------

def _install_handlers(app: FastAPI, state: ServiceState) -> None:
    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        state.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        state.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
        if not state.auth:
            response.headers["X-Auth-Disabled"] = "true"
        return response

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": exc.detail})

    @app.exception_handler(ReviewError)
    async def refused(_: Request, exc: ReviewError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": {"error": str(exc)}})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ())), "error": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": {"error": "invalid request body", "fields": errors}})


def _scope(state: ServiceState, scope: str) -> Callable[[Request], Awaitable[TokenInfo | None]]:
    async def check(request: Request) -> TokenInfo | None:
        if not state.auth:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            info = state.tokens.authenticate(token.strip()) if scheme.lower() == "bearer" and state.tokens else None
        except TokenError as exc:  # the token file does not verify: no token is trusted, the cause is the answer
            raise HTTPException(503, {"error": str(exc)}) from exc
        if info is None:
            raise HTTPException(401, {"error": "missing or invalid bearer token"}, headers={"WWW-Authenticate": "Bearer"})
        if scope not in info.scopes:
            raise HTTPException(403, {"error": f"token {info.name!r} lacks scope {scope!r}", "scopes": list(info.scopes)})
        return info
    return check


async def _persist(state: ServiceState, records: Sequence[BaseModel]) -> None:
    """Append `records` and wait until they are durable; 503 if they cannot be."""
    started = time.perf_counter()
    try:
        futures = state.decision_log.submit_many([r.model_dump(mode="json") for r in records])
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    except Exception as exc:
        state.metrics.log_failures.inc()
        log.error("decision log write failed: %s", exc)
        raise ServiceUnavailable({"error": "decision log not writable; nothing was decided",
                                  "cause": f"{type(exc).__name__}: {exc}"}) from exc
    state.metrics.log_write_seconds.observe(time.perf_counter() - started)


async def _decide(state: ServiceState, rows: list[dict[str, Any]], request_id: str | None) -> list[Any]:
    """Validate, decide, record (durably), and return the per-row documents."""
    started = time.perf_counter()
    decider = state.decider
    try:
        canonical = decider.validate(rows)
        batch = await run_in_threadpool(decider.decide_validated, canonical)
    except DecisionInputError as exc:
        raise HTTPException(422, {"error": str(exc), "row": exc.row, "column": exc.column}) from exc
    except DataError as exc:
        raise HTTPException(422, {"error": str(exc)}) from exc
    except RefusalError as exc:
        latency = (time.perf_counter() - started) * 1000
        record = refusal_record(decider, exc, [jsonable_features(r) for r in canonical], state.identity, request_id,
                                latency)
        await _persist(state, [record])
        state.metrics.observe_refusal(len(canonical), {n: m.reason for n, m in exc.members.items()})
        raise ServiceUnavailable({"error": "refused: too few working members", "reason": exc.reason,
                                  "refusal_id": record.id}) from exc
    if not batch.rows:
        return []
    records = decision_records(decider, batch, state.identity, request_id, state.store_columns, batch.seconds * 1000)
    await _persist(state, [*records, *review_items(records, batch.features, state.segment_column)])
    state.metrics.observe_batch(batch)
    if state.shadow is not None:
        state.shadow.submit(rows, records)  # returns at once; its failures never reach this answer
    return [decision_document(record, row) for record, row in zip(records, batch.rows, strict=True)]


def _rows(body: DecisionRequest | InvocationRequest) -> list[dict[str, Any]]:
    """The request's rows as records; a malformed body (ragged `dataframe_split`) is a 422."""
    try:
        return body.records()
    except ValueError as exc:
        raise HTTPException(422, {"error": str(exc)}) from exc


# --- routes -------------------------------------------------------------------------------------

def _install_routes(app: FastAPI, state: ServiceState) -> None:
    decide, read, review = (Depends(_scope(state, s)) for s in ("decide", "read", "review"))

    @app.post("/v1/decisions")
    async def post_decisions(body: DecisionRequest, _: TokenInfo | None = decide) -> JSONResponse:
        documents = await _decide(state, _rows(body), body.request_id)
        return JSONResponse(DecisionResponse(request_id=body.request_id, decisions=documents).model_dump(mode="json"))

    @app.post("/invocations")
    async def invocations(body: InvocationRequest, _: TokenInfo | None = decide) -> JSONResponse:
        documents = await _decide(state, _rows(body), None)
        return JSONResponse({"predictions": [
            {"probability": d.probability, "decision": d.decision, "agreement": d.agreement,
             "needs_review": d.needs_review, "decision_id": d.decision_id, "degraded": d.degraded}
            for d in documents]})

    @app.get("/v1/decisions/{decision_id}")
    async def get_decision(decision_id: str, _: TokenInfo | None = read) -> JSONResponse:
        entry = await run_in_threadpool(state.decision_log.get, decision_id)
        if entry is None:
            raise HTTPException(404, {"error": f"no decision {decision_id!r} in the decision log"})
        return JSONResponse(entry)

    def queue() -> ReviewQueue:
        if state.queue is None:
            raise HTTPException(404, {"error": "no review queue: the decision log is disabled"})
        return state.queue

    def view(item: Any) -> JSONResponse:
        q = queue()
        return JSONResponse(item.document(q.clock(), q.sla_hours * 3600))

    @app.get("/v1/reviews")
    async def list_reviews(status: str = "unresolved", reason: str | None = None, segment: str | None = None,
                           limit: int = 100, _: TokenInfo | None = review) -> JSONResponse:
        if status not in ("open", "claimed", "resolved", "unresolved", "all"):
            raise HTTPException(422, {"error": f"status must be open, claimed, resolved, unresolved or all; "
                                               f"got {status!r}"})
        if not 1 <= limit <= 10_000:
            raise HTTPException(422, {"error": f"limit must be between 1 and 10000, got {limit}"})
        q = queue()
        items = await run_in_threadpool(q.items, status, reason, segment, limit)  # type: ignore[arg-type]
        now, sla = q.clock(), q.sla_hours * 3600
        return JSONResponse({"items": [item.document(now, sla) for item in items]})

    @app.get("/v1/reviews/sla")
    async def review_sla(_: TokenInfo | None = review) -> JSONResponse:
        return JSONResponse((await run_in_threadpool(queue().sla)).document())

    @app.get("/v1/reviews/{decision_id}")
    async def get_review(decision_id: str, _: TokenInfo | None = review) -> JSONResponse:
        return view(await run_in_threadpool(queue().get, decision_id))

    @app.post("/v1/reviews/{decision_id}/claim")
    async def claim(decision_id: str, body: ClaimRequest, token: TokenInfo | None = review) -> JSONResponse:
        return view(await run_in_threadpool(lambda: queue().claim(decision_id, body.reviewer,
                                                                  token_name=token.name if token else None)))

    @app.post("/v1/reviews/{decision_id}/release")
    async def release(decision_id: str, body: ReleaseRequest, token: TokenInfo | None = review) -> JSONResponse:
        return view(await run_in_threadpool(lambda: queue().release(
            decision_id, body.reviewer, note=body.note, force=body.force, token_name=token.name if token else None)))

    @app.post("/v1/reviews/{decision_id}/resolve")
    async def resolve(decision_id: str, body: ResolveRequest, token: TokenInfo | None = review) -> JSONResponse:
        item = await run_in_threadpool(lambda: queue().resolve(
            decision_id, body.reviewer, body.decision, body.note, token_name=token.name if token else None))
        state.metrics.observe_resolution(item)
        return view(item)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        document = await run_in_threadpool(readiness, state)
        return JSONResponse(document, status_code=200 if document["ready"] else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.queue is not None:
            try:
                state.metrics.observe_queue(await run_in_threadpool(state.queue.sla))
            except Exception as exc:  # a broken log: the other metrics still say so
                log.error("review queue not readable for /metrics: %s", exc)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _queue_sla(state: ServiceState) -> dict[str, Any] | None:
    """The review queue against its SLA, or why it cannot be read (a broken log is /ready's own finding)."""
    if state.queue is None:
        return None
    try:
        return state.queue.sla().document()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _tokens_readable(state: ServiceState) -> tuple[bool, str]:
    """With auth on, whether the token file verifies (a file that does not makes every request a 503)."""
    if not state.auth or state.tokens is None:
        return True, "auth off"
    try:
        return True, f"{len(state.tokens.tokens())} token(s)"
    except TokenError as exc:
        return False, str(exc)


def readiness(state: ServiceState) -> dict[str, Any]:
    log_ok, log_detail = state.decision_log.writable()
    warnings = [] if state.auth else [NO_AUTH_WARNING]
    if not state.decision_log.enabled:
        warnings.append("DECISION LOG DISABLED: decisions are not recorded")
    decider = state.decider
    bundle: Mapping[str, Any] = {
        "verified": True, "path": state.bundle_path, "dataset": decider.dataset,
        "ensemble_version": decider.ensemble_version, "config_hash": decider.config_hash,
        "manifest_sha256": state.identity.manifest_sha256, "members": list(decider.runtime.members),
        "min_members": decider.min_members, "member_timeout_s": decider.member_timeout_s,
    }
    tokens_ok, tokens_detail = _tokens_readable(state)
    if not tokens_ok:
        warnings.append(f"TOKENS REFUSED: {tokens_detail}")
    queue = _queue_sla(state)
    if queue is not None and queue.get("breached"):
        warnings.append(f"REVIEW SLA BREACHED: {queue['past_sla']} item(s) open longer than {queue['sla_hours']} h")
    return {
        "ready": log_ok and tokens_ok,  # a breached review SLA is an alert, not a reason to stop deciding
        "review_queue": queue,
        "shadow": state.shadow.stats().document() if state.shadow is not None else None,
        "bundle": bundle,
        "decision_log": {"writable": log_ok, "enabled": state.decision_log.enabled, "detail": log_detail},
        "auth": "bearer tokens (scopes decide, read, review)" if state.auth else NO_AUTH_WARNING,
        "auth_enabled": state.auth,
        "stored_columns": state.store_columns,
        "warnings": warnings,
    }
