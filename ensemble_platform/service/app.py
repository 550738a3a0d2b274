"""The decision service's HTTP API (FastAPI).

    POST /v1/decisions              scope decide   rows -> decisions, each recorded before the answer
    POST /invocations               scope decide   MLflow scoring-server input/output, recorded the same way
    GET  /v1/decisions/{id}         scope read     a stored decision-log entry
    POST /v1/decisions/{id}/reviews scope review   a reviewer's outcome for a decision, recorded
    GET  /health, /ready, /metrics                 liveness; readiness (bundle, log, auth mode); Prometheus

Nothing is answered without a record: the response is sent only after the group-commit future of every
record of the request resolved (durable + checkpointed); a log that cannot be written answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ensemble_platform.decisions.log import DecisionLogLike
from ensemble_platform.errors import DataError
from ensemble_platform.service.documents import (
    DecisionRequest,
    DecisionResponse,
    InvocationRequest,
)
from ensemble_platform.service.metrics import ServiceMetrics
from ensemble_platform.service.recording import (
    Identity,
    decision_document,
    decision_records,
    default_store_columns,
    refusal_record,
)
from ensemble_platform.service.tokens import TokenInfo, TokenStore
from ensemble_platform.serving.decider import Decider, DecisionInputError, RefusalError, jsonable_features

log = logging.getLogger("ensemble_platform.service")
NO_AUTH_WARNING = ("AUTHENTICATION DISABLED (--no-auth): every endpoint, deciding included, is open to anyone who "
                   "can reach this port")
CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


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
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    bundle_path: str | None = None


def create_app(decider: Decider, decision_log: DecisionLogLike, tokens: TokenStore | None, *, auth: bool = True,
               manifest_sha256: str = "", store_columns: Sequence[str] | None = None,
               bundle_path: str | None = None) -> FastAPI:
    """The app serving `decider`, recording into `decision_log`, authenticating against `tokens`.
    `store_columns`: input columns kept in each record (default: every feature but the sensitive ones)."""
    if auth and tokens is None:
        raise ValueError("auth=True needs a token store")
    columns = list(store_columns) if store_columns is not None else default_store_columns(decider)
    unknown = sorted(set(columns) - set(decider.features))
    if unknown:
        raise ValueError(f"store_columns {unknown} are not features of the ensemble ({decider.features})")
    state = ServiceState(decider, decision_log, tokens, auth, Identity.of(decider, manifest_sha256), columns,
                         bundle_path=bundle_path)
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

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ())), "error": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": {"error": "invalid request body", "fields": errors}})


def _scope(state: ServiceState, scope: str) -> Callable[[Request], Awaitable[TokenInfo | None]]:
    async def check(request: Request) -> TokenInfo | None:
        if not state.auth:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        info = state.tokens.authenticate(token.strip()) if scheme.lower() == "bearer" and state.tokens else None
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
    await _persist(state, records)
    state.metrics.observe_batch(batch)
    return [decision_document(record, row) for record, row in zip(records, batch.rows, strict=True)]


# --- routes -------------------------------------------------------------------------------------

def _install_routes(app: FastAPI, state: ServiceState) -> None:
    decide, read, review = (Depends(_scope(state, s)) for s in ("decide", "read", "review"))

    @app.post("/v1/decisions")
    async def post_decisions(body: DecisionRequest, _: TokenInfo | None = decide) -> JSONResponse:
        try:
            rows = body.records()
        except ValueError as exc:
            raise HTTPException(422, {"error": str(exc)}) from exc
        documents = await _decide(state, rows, body.request_id)
        return JSONResponse(DecisionResponse(request_id=body.request_id, decisions=documents).model_dump(mode="json"))

    @app.post("/invocations")
    async def invocations(body: InvocationRequest, _: TokenInfo | None = decide) -> JSONResponse:
        try:
            rows = body.records()
        except ValueError as exc:
            raise HTTPException(422, {"error": str(exc)}) from exc
        documents = await _decide(state, rows, None)
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

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        document = await run_in_threadpool(readiness, state)
        return JSONResponse(document, status_code=200 if document["ready"] else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


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
    return {
        "ready": log_ok,
        "bundle": bundle,
        "decision_log": {"writable": log_ok, "enabled": state.decision_log.enabled, "detail": log_detail},
        "auth": "bearer tokens (scopes decide, read, review)" if state.auth else NO_AUTH_WARNING,
        "auth_enabled": state.auth,
        "stored_columns": state.store_columns,
        "warnings": warnings,
    }
