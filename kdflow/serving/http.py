"""The scoring server's HTTP surface: a FastAPI (Starlette) app served by uvicorn in one process.

| route | answer |
|---|---|
| ``POST /invocations`` | MLflow's scoring protocol (:mod:`kdflow.serving.requests`): ``{"predictions": [{"class", "probabilities", "answered_by", "request_id"}, ...], "model_name", "model_version"}`` |
| ``POST /labels`` | late labels ``{"labels": [{"request_id", "label"}, ...]}`` written with :func:`kdflow.inference_logs.write_labels` |
| ``GET /ping`` | 200 once a model is loaded |
| ``GET /health`` | model, version, runtime, rows served, rejected requests, log buffer depth, spilled parts pending |
| ``GET /version`` | the kdflow version and the serving model version |

The request path parses the raw body itself (orjson, numpy; no pydantic model), runs the model in the event
loop (a student is small) and appends to the log buffer; every refused request is a 4xx with one line
``{"error": "..."}``, counted and recorded. uvicorn's graceful shutdown (SIGTERM/SIGINT) finishes the requests
in flight, then the lifespan's exit drains the shadow teacher and flushes the log.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import kdflow
from kdflow.config import DistillConfig
from kdflow.inference_logs import write_labels
from kdflow.serving.holder import ModelHolder, Teacher
from kdflow.serving.logbuffer import LogBuffer
from kdflow.serving.requests import RequestError, check_content_type, parse_inputs, parse_labels
from kdflow.serving.scorer import Scorer
from kdflow.store import StoreError

JSON = "application/json"

log = logging.getLogger(__name__)


def json_response(payload: Any, status: int = 200) -> Response:
    """``payload`` as a JSON response (orjson; numpy arrays allowed)."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=JSON)


def error_response(status: int, message: str) -> Response:
    """The one-line error body ``{"error": message}``."""
    return json_response({"error": message}, status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes (header or stream)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, f"invalid Content-Length {declared!r}") from None
        if size > limit:
            raise RequestError(413, f"body of {size} bytes exceeds serving.max_body_bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body exceeds serving.max_body_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


class Server:
    """Everything one scoring process holds: config, versions, teacher, log buffer, counters."""

    def __init__(self, cfg: DistillConfig):
        serving = cfg.serving
        self.cfg = cfg
        self.name = cfg.registry.student_name
        self.holder = ModelHolder(self.name, serving.alias, serving.runtime, serving.poll_seconds,
                                  with_challenger=serving.challenger_fraction > 0)  # fmt: skip
        shape = self.holder.champion.model.input_shape
        self.width = math.prod(shape)
        teacher = Teacher(serving.teacher, shape) if serving.teacher else None
        self.buffer = LogBuffer(cfg.logs.root, self.name, serving.spill_dir, serving.log_flush_rows,
                                serving.log_flush_seconds, cfg.logs.endpoint_url)  # fmt: skip
        self.scorer = Scorer(self.holder, self.buffer, teacher, serving.shadow_fraction, serving.cascade.enabled,
                             serving.challenger_fraction, serving.cascade.threshold)  # fmt: skip
        self.rejected = 0
        self.labels_written = 0

    def refuse(self, request: Request, exc: RequestError, body_bytes: int) -> Response:
        """Count, log and record a refused request; its 4xx response."""
        self.rejected += 1
        self.buffer.reject(exc.status, exc.message, request.url.path, body_bytes)
        log.warning("refused %s %s (%d): %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(exc.status, exc.message)

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` reports."""
        champion, challenger, teacher = self.holder.champion, self.holder.challenger, self.scorer.teacher
        return {
            "status": "ok",
            "model_name": self.name,
            "model_version": champion.version,
            "alias": self.holder.alias,
            "runtime": self.holder.runtime,
            "input_width": self.width,
            "num_classes": champion.model.num_classes,
            "cascade_threshold": (
                (champion.threshold if self.scorer.threshold is None else self.scorer.threshold)
                if self.scorer.cascade
                else None
            ),
            "challenger_version": challenger.version if challenger else None,
            "teacher_version": teacher.version if teacher else None,
            "swaps": self.holder.swaps,
            "rows_served": self.scorer.rows_served,
            "rows_answered_by_teacher": self.scorer.rows_by_teacher,
            "rejected": self.rejected,
            "log_buffer_rows": self.buffer.depth,
            "shadow_queue": self.scorer.shadow.queue.qsize() if self.scorer.shadow else 0,
            "rows_logged": self.buffer.rows_written,
            "spilled_parts_pending": self.buffer.spill_pending,
            "labels_written": self.labels_written,
        }

    def write_labels(self, ids: list[str], labels: list[int]) -> None:
        """Write validated late labels under ``logs.root/labels/`` (blocking: called from a worker thread)."""
        logs = self.cfg.logs
        write_labels(logs.root, ids, labels, datetime.now(timezone.utc), endpoint_url=logs.endpoint_url)
        self.labels_written += len(ids)


def create_app(server: Server) -> FastAPI:
    """The ASGI app of ``server``; its lifespan starts the background threads and, on exit, flushes the log."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.scorer.start()
        log.info("serving %s version %s (%s) ", server.name, server.holder.champion.version, server.holder.runtime)
        try:
            yield
        finally:
            await run_in_threadpool(server.scorer.close)

    app = FastAPI(title="kdflow scoring server", version=kdflow.__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip
    limits = server.cfg.serving

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:  # 404, 405: one line too
        return error_response(exc.status_code, str(exc.detail))

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        accepted_at = time.time()
        t0 = time.perf_counter()
        body = b""
        try:
            check_content_type(request.headers.get("content-type"))
            body = await read_body(request, limits.max_body_bytes)
            x = parse_inputs(body, server.width, limits.max_rows_per_request)
        except RequestError as exc:
            return server.refuse(request, exc, len(body))
        scored = server.scorer.score(x)
        classes = scored.answer.argmax(axis=1).tolist()
        rows = scored.answer.tolist()
        payload = {
            "predictions": [
                {"class": k, "probabilities": p, "answered_by": a, "request_id": r}
                for k, p, a, r in zip(classes, rows, scored.answered_by, scored.request_ids)
            ],
            "model_name": server.name,
            "model_version": scored.served.version,
        }
        response = json_response(payload)
        server.scorer.log(scored, accepted_at, (time.perf_counter() - t0) * 1000.0)
        return response

    @app.post("/labels")
    async def labels(request: Request) -> Response:
        body = b""
        try:
            check_content_type(request.headers.get("content-type"))
            body = await read_body(request, limits.max_body_bytes)
            ids, ys = parse_labels(body, server.holder.champion.model.num_classes)
        except RequestError as exc:
            return server.refuse(request, exc, len(body))
        try:
            await run_in_threadpool(server.write_labels, ids, ys)
        except StoreError as exc:
            log.error("cannot write %d label(s): %s", len(ids), exc)
            return error_response(503, f"cannot write the labels now (retry later): {exc}")
        return json_response({"written": len(ids)})

    @app.get("/ping")
    async def ping() -> Response:
        return Response(b"\n", media_type="text/plain")

    @app.get("/health")
    async def health() -> Response:
        return json_response(server.health())

    @app.get("/version")
    async def version() -> Response:
        return json_response({"kdflow": kdflow.__version__, "model_name": server.name,
                              "model_version": server.holder.champion.version})  # fmt: skip

    return app


def serve(server: Server, host: str, port: int) -> None:
    """Run ``server`` under uvicorn on ``host:port`` until SIGTERM/SIGINT (graceful: in-flight requests finish,
    then the log is flushed)."""
    import uvicorn

    config = uvicorn.Config(create_app(server), host=host, port=port, access_log=False, log_level="info",
                            timeout_graceful_shutdown=30, lifespan="on")  # fmt: skip
    # uvicorn re-raises the stop signal once shut down (so the process would die of it); after a graceful
    # shutdown whose log is flushed the process exits 0 instead, as supervisors expect of a clean stop.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()
