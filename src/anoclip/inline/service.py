"""`anoclip serve`'s HTTP service (FastAPI; extra `serve`) over one inline engine.

    POST /inspect[?id=ID&object=NAME]   one image (raw body or multipart field "file")
                                        -> {id, score, decision, threshold, notes, ...}
    GET  /results/{id}                  the stored answer
    GET  /results?since=SEQ&limit=N     answers after SEQ, in arrival order
    GET  /results/{id}/overlay.png      heat-map overlay;  /mask.png: the defect mask
    GET  /health                        status, parts, memory, warm-up left
    GET  /metrics                       Prometheus text: requests, decisions, latency, memory

Every body is checked before it reaches the engine: empty (400), over `max_bytes` (413),
not a decodable image or truncated (400), over `max_pixels` before decoding (413, the
decompression bomb guard), an id outside [A-Za-z0-9._-]{1,128} (400), another object (400).
With a token every request needs `Authorization: Bearer TOKEN` (else 401). Ids are the only
names that reach the disk, so no request reads or writes outside the service's folder.
"""

import asyncio
import hmac
import io
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anoclip.data.images import load_rgb
from anoclip.errors import ImageDecodeError
from anoclip.extras import require
from anoclip.inline.batcher import Batcher
from anoclip.inline.line import IMAGES, MAPS, Incoming, Line, durable_write
from anoclip.inline.store import Record

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_BYTES = 32 * 2**20  # 32 MiB per image
MAX_PIXELS = 64 * 10**6  # 64 megapixels


@dataclass(frozen=True)
class Limits:
    """What a request may send, and the bearer token (None: none needed, loopback only)."""

    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    token: str | None = None


class Refused(Exception):
    """A request refused with an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def image_format(data: bytes, max_pixels: int) -> str:
    """The file extension of the image whose header `data` starts with, read without
    decoding its pixels (Refused: empty, not an image, over `max_pixels`)."""
    from PIL import Image

    if not data:
        raise Refused(400, "empty body: send the image's bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises many kinds for bad files
        why = re.sub(r" <[^>]*>", "", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise Refused(400, f"not a readable image: {why[:200]}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise Refused(413, f"{width}x{height} pixels is over the {max_pixels} pixel limit")
    return {"jpeg": "jpg"}.get((img.format or "png").lower(), (img.format or "png").lower())


def decoded(path: Path) -> Any:
    """The image at `path` decoded once, as the data path decodes it (data.images.load_rgb);
    an undecodable or truncated file is removed and Refused."""
    try:
        return load_rgb(path)
    except ImageDecodeError as exc:
        path.unlink(missing_ok=True)
        raise Refused(400, f"not a readable image: {exc}") from None


def answer(rec: Record, line: Line) -> dict[str, Any]:
    """The JSON answer for a stored part."""
    out: dict[str, Any] = {
        "id": rec.id, "seq": rec.seq, "score": rec.score, "decision": rec.decision,
        "score/threshold": rec.ratio, "method": rec.method, "notes": list(rec.notes),
        "latency_ms": rec.latency_ms, "width": rec.width, "height": rec.height,
    }  # fmt: skip
    if rec.ratio:
        out["threshold"] = rec.score / rec.ratio
    if rec.score is not None:
        out.update(overlay=f"/results/{rec.id}/overlay.png", mask=f"/results/{rec.id}/mask.png")
    if rec.decision == "pending":
        out["warmup_left"] = max(0, line.setup.warmup - len(line.store.pending()))
    return out


def part_id(given: str | None) -> str:
    if given is None:
        return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    if not ID_PATTERN.fullmatch(given):
        raise Refused(400, "id must be 1-128 characters of A-Z a-z 0-9 . _ -")
    return given


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused (413) once it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"body of {declared} bytes is over the {limit} byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"body is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Any, limit: int) -> bytes:
    """The image from a raw body, or from a multipart form's "file" field."""
    body = await read_body(request, limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body
    request._body = body  # the form parser reads the body already read
    form = await request.form()
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise Refused(400, 'multipart body without a "file" field')
        return await upload.read()
    finally:
        await form.close()


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (no global state)."""

    def __init__(self) -> None:
        pc = require("prometheus_client", "serve", "anoclip serve")
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.requests = pc.Counter("anoclip_requests", "HTTP requests", ["path", "status"],
                                   registry=r)  # fmt: skip
        self.decisions = pc.Counter("anoclip_decisions", "parts decided", ["decision"], registry=r)
        edges = (0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 1, 2, 5, 10)
        self.latency = pc.Histogram("anoclip_inspect_seconds", "POST /inspect latency",
                                    buckets=edges, registry=r)  # fmt: skip
        self.memory = pc.Gauge("anoclip_memory_parts", "parts in the rolling memory", registry=r)
        self.parts = pc.Gauge("anoclip_parts", "parts in the store", registry=r)
        self.text = lambda: pc.generate_latest(r)  # noqa: E731


def create_app(line: Line, batcher: Batcher, limits: Limits = Limits()) -> Any:
    """The FastAPI app (module doc) over `line`, fed through `batcher`."""
    fastapi = require("fastapi", "serve", "anoclip serve")
    from fastapi.responses import FileResponse, JSONResponse, Response

    app, metrics = fastapi.FastAPI(title="anoclip", version="1"), Metrics()
    refused = lambda s, why: JSONResponse({"error": why}, status_code=s)  # noqa: E731

    @app.middleware("http")
    async def guard(request: Any, call_next: Any) -> Any:
        given = request.headers.get("authorization", "")
        if limits.token and not hmac.compare_digest(given, f"Bearer {limits.token}"):
            response = refused(401, "missing or wrong bearer token")
        else:
            try:
                response = await call_next(request)
            except Refused as exc:
                response = refused(exc.status, exc.reason)
        route = request.scope.get("route")
        metrics.requests.labels(getattr(route, "path", "other"), response.status_code).inc()
        return response

    @app.exception_handler(Refused)
    async def on_refused(request: Any, exc: Refused) -> Any:
        return refused(exc.status, exc.reason)

    @app.post("/inspect")
    async def inspect(request: fastapi.Request, id: str | None = None,
                      object: str | None = None) -> Any:  # fmt: skip
        started = time.time()
        ident = part_id(id)
        if object is not None and object != line.setup.object:
            raise Refused(400, f"unknown object {object!r}: this service inspects "
                               f"{line.setup.object!r}")  # fmt: skip
        data = await image_bytes(request, limits.max_bytes)
        known = line.store.get(ident)
        if known is None:
            ext = await asyncio.to_thread(image_format, data, limits.max_pixels)
            path = line.out / IMAGES / f"{ident}.{ext}"
            await asyncio.to_thread(durable_write, path, data)
            image = await asyncio.to_thread(decoded, path)
            item = Incoming(ident, path, str(path), started, image)
            known = await asyncio.wrap_future(batcher.submit(item))
            metrics.decisions.labels(known.decision).inc()
        metrics.latency.observe(time.time() - started)
        return answer(known, line)

    @app.get("/results/{ident}")
    def result(ident: str) -> Any:
        rec = line.store.get(part_id(ident))
        return refused(404, f"no part {ident}") if rec is None else answer(rec, line)

    @app.get("/results")
    def results(since: int = 0, limit: int = 100) -> Any:
        found = line.store.since(since, max(1, min(limit, 1000)))
        return {"results": [answer(r, line) for r in found],
                "next": found[-1].seq if found else since}  # fmt: skip

    @app.get("/results/{ident}/{kind}.png")
    def picture(ident: str, kind: str) -> Any:
        rec = line.store.get(part_id(ident))
        if rec is None or rec.score is None or kind not in ("overlay", "mask"):
            return refused(404, f"no {kind} for {ident}")
        path = line.out / (MAPS if kind == "overlay" else "masks") / f"{rec.id}.png"
        if not path.is_file():
            line.draw(rec.id)
        return FileResponse(path) if path.is_file() else refused(404, f"no {kind} for {ident}")

    @app.get("/health")
    def health() -> Any:
        left = max(0, line.setup.warmup - len(line.store.pending())) if line.warming else 0
        memory = len(line.memory) if line.memory is not None else 0
        return {"status": "ok", "object": line.setup.object, "parts": line.store.count(),
                "memory": memory, "warming": line.warming, "warmup_left": left}  # fmt: skip

    @app.get("/metrics")
    def prometheus() -> Any:
        metrics.memory.set(len(line.memory) if line.memory is not None else 0)
        metrics.parts.set(line.store.count())
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    return app
