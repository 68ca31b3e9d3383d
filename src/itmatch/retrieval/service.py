"""The HTTP service: JSON search endpoints, photo files and thumbnails, and the search page.

``create_app(index_dir)`` loads the index and its model once, warms them up, and returns a FastAPI
app (``itmatch serve`` runs it with uvicorn). Endpoints::

    GET  /                              the search page (static HTML/JS/CSS, no external assets)
    GET  /api/health                    status, counts, model identity, limits
    GET  /api/search/text?q=...&k=10    sentence -> photos
    POST /api/search/text               the same, JSON body {"query": "...", "k": 10}
    POST /api/search/image              multipart upload "file" (+ form field "k"): photo -> similar
                                        photos, and sentences when the index has captions
    GET  /api/photos/{id}/similar?k=10  indexed photo -> similar photos
    GET  /photos/{path}                 an indexed photo file
    GET  /thumbs/{path}                 its JPEG thumbnail (longest side ``thumb_size``)

Limits: the query length (400), ``1 <= k <= max_k`` (400), the request body size (413, checked
before the body is read when the client sends Content-Length), the pixel count of an upload (413),
a non-image upload (415 by declared type, 400 when it does not decode). Only files that are in the
index and resolve inside the indexed folder are ever served: anything else is 404.

Guards: requests whose Host header is not one of ``allowed_hosts`` get 400 (a DNS-rebinding page
cannot query a local server), and with a ``token`` every request needs it (``Authorization:
Bearer``, or ``?token=`` once, which sets a cookie for the page). Uploads are decoded and embedded
in a small bounded thread pool, never on the event loop. :func:`run_server` adds what the HTTP
server itself must do against slow or many clients: a header timeout and a connection limit.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations at
# runtime, and some name types defined inside create_app.
import asyncio
import hmac
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from itmatch.errors import ImageReadError, ItmatchError
from itmatch.retrieval.engine import DEFAULT_MAX_QUERY_CHARS, Hit, SearchEngine, clean_query

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_K = 100
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
DEFAULT_THUMB_SIZE = 256
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds a connection may take to send a request's headers
DEFAULT_KEEP_ALIVE_TIMEOUT = 5
TOKEN_COOKIE = "itmatch_token"
TOKEN_ENV = "ITMATCH_SERVE_TOKEN"
# Declared upload types accepted besides image/*: clients that do not know the type send these.
_UNTYPED = {"", "application/octet-stream"}


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes`` (by Content-Length up front, or
    counted while streaming when the client sends none)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._reject(send)
                return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    from starlette.exceptions import HTTPException

                    # An HTTPException passes through FastAPI's body parsing as itself (413).
                    raise HTTPException(413, self._message()) from _BodyTooLarge()
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception as exc:
            if started or not isinstance(exc.__cause__, _BodyTooLarge):
                raise
            await self._reject(send)

    def _message(self) -> str:
        return f"request body too large: the limit is {self.max_bytes} bytes ({self.max_bytes / 2**20:.1f} MiB)"

    async def _reject(self, send: Any) -> None:
        import json

        body = json.dumps({"detail": self._message()}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def host_name(header: str) -> str:
    """The name in a Host header, without the port, lower-case (``[::1]:8000`` -> ``::1``)."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.index("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class RequestGuard:
    """ASGI middleware: 400 for a Host header not in ``allowed_hosts`` (None or ``*``: any), and
    with a ``token``, 401 for a request that does not carry it (``Authorization: Bearer TOKEN``,
    the cookie, or ``?token=TOKEN``, which also sets the cookie so the page's requests carry it)."""

    def __init__(self, app: Any, allowed_hosts: Sequence[str] | None, token: str | None):
        self.app = app
        hosts = None if allowed_hosts is None or "*" in allowed_hosts else {host_name(h) for h in allowed_hosts}
        self.allowed = hosts
        self.token = token or None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        if self.allowed is not None:
            name = host_name(headers.get("host", ""))
            if name not in self.allowed:
                shown = ", ".join(sorted(self.allowed))
                await _json_response(send, 400, f"Host {name!r} is not served here (allowed: {shown}; "
                                                "add one with itmatch serve --allow-host NAME)")  # fmt: skip
                return
        if self.token is None:
            await self.app(scope, receive, send)
            return
        given = _bearer(headers.get("authorization", "")) or _cookie(headers.get("cookie", ""), TOKEN_COOKIE)
        from_query = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [None])[0]
        if not any(t is not None and hmac.compare_digest(t.encode(), self.token.encode()) for t in (given, from_query)):
            await _json_response(send, 401, "this server needs its token: open the address it printed "
                                            "(…/?token=...), or send Authorization: Bearer TOKEN",
                                 [(b"www-authenticate", b'Bearer realm="itmatch"')])  # fmt: skip
            return
        if from_query is None or given is not None:
            await self.app(scope, receive, send)
            return
        cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _bearer(value: str) -> str | None:
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


async def _json_response(send: Any, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _ThumbCache:
    """A small thread-safe LRU of encoded thumbnails, keyed by (path, mtime)."""

    def __init__(self, capacity: int = 2048):
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, int], value: bytes) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


def create_app(
    index_dir: str | Path | None = None,
    run: str | Path | None = None,
    *,
    engine: SearchEngine | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    exact: bool = False,
    max_k: int = DEFAULT_MAX_K,
    max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    thumb_size: int = DEFAULT_THUMB_SIZE,
    allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS,
    token: str | None = None,
    upload_workers: int | None = None,
) -> Any:
    """The FastAPI app over an index (``index_dir``, queried with ``run`` or the run recorded in
    the index), or over an already loaded ``engine``. Everything loads here, once.

    ``allowed_hosts``: the Host header names answered (default: this machine's loopback names;
    None or ``["*"]``: any). ``token``: required on every request when set. ``upload_workers``:
    threads that decode and embed uploads (default: half the CPU cores, at least 1); more
    uploads wait their turn, so large ones cannot starve text queries of every core."""
    from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, StrictInt, StrictStr

    if engine is None:
        if index_dir is None:
            raise ItmatchError("create_app needs an index folder or a loaded SearchEngine")
        engine = SearchEngine.open(index_dir, run, checkpoint=checkpoint, device=device, exact=exact,
                                   max_query_chars=max_query_chars)  # fmt: skip
    engine.max_query_chars = int(max_query_chars)
    engine.warm_up()
    index = engine.index
    root = index.images_root.resolve()
    thumbs = _ThumbCache()
    limits = {"max_k": int(max_k), "max_query_chars": int(max_query_chars), "max_upload_bytes": int(max_upload_bytes),
              "max_image_pixels": int(max_image_pixels)}  # fmt: skip

    app = FastAPI(title="itmatch search", version="1", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes)
    app.add_middleware(RequestGuard, allowed_hosts=allowed_hosts, token=token)  # added last: runs first
    workers = upload_workers or max(1, (os.cpu_count() or 2) // 2)
    upload_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="itmatch-upload")
    app.state.upload_pool = upload_pool
    app.state.engine = engine
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def check_k(k: int) -> int:
        if not 1 <= k <= max_k:
            raise HTTPException(400, f"k must be between 1 and {max_k}, got {k}")
        return k

    def hit_json(hit: Hit) -> dict[str, Any]:
        out = hit.to_dict()
        if hit.path is not None and index.photo(hit.path) is not None:
            out["url"] = "/photos/" + quote(hit.path)
            out["thumb_url"] = "/thumbs/" + quote(hit.path)
        return out

    def text_search(q: str, k: int) -> dict[str, Any]:
        check_k(k)
        try:
            query = clean_query(q, max_query_chars)
        except ItmatchError as exc:
            raise HTTPException(400, str(exc)) from None
        t = time.perf_counter()
        hits = engine.search_text(query, k)
        took = (time.perf_counter() - t) * 1000
        return {"query": query, "k": k, "took_ms": round(took, 2), "photos": [hit_json(h) for h in hits]}

    def indexed_file(path: str) -> tuple[Path, Any]:
        """The file behind an indexed relative path, or 404: never anything outside the folder."""
        photo = index.photo(path)
        if photo is None:
            raise HTTPException(404, "not an indexed photo")
        target = (root / photo.path).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(404, "not an indexed photo")
        return target, photo

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        model = index.model
        return {
            "status": "ok",
            "photos": len(index),
            "sentences": len(index.captions),
            "embed_dim": index.embed_dim,
            "model": {"checkpoint_sha256": model.get("checkpoint_sha256"), "recipe": model.get("recipe")},
            "search": index.manifest.get("approximate") or {"method": "exact"},
            "limits": limits,
        }

    @app.get("/api/search/text")
    def search_text_get(q: Annotated[str, Query(description="the sentence")], k: int = 10) -> dict[str, Any]:
        return text_search(q, k)

    class TextQuery(BaseModel):
        query: StrictStr
        k: StrictInt = 10  # JSON true is not 1

    @app.post("/api/search/text")
    def search_text_post(body: TextQuery) -> dict[str, Any]:
        return text_search(body.query, body.k)

    @app.post("/api/search/image")
    async def search_image(file: Annotated[UploadFile, File()], k: Annotated[int, Form()] = 10) -> dict[str, Any]:
        check_k(k)
        declared = (file.content_type or "").split(";")[0].strip().lower()
        if not declared.startswith("image/") and declared not in _UNTYPED:
            raise HTTPException(415, f"expected an image upload (image/jpeg, image/png, ...), got {declared!r}")
        data = await file.read()
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"upload too large: the limit is {max_upload_bytes} bytes")
        if not data:
            raise HTTPException(400, "the uploaded file is empty")

        def decode_and_search() -> tuple[Any, Any, list, list, float]:
            # In the upload pool: decoding a 50 MP PNG takes seconds of CPU, which on the event
            # loop would stall every other client's request.
            image = _decode_image(data, max_image_pixels, HTTPException)
            t = time.perf_counter()
            try:
                vector = engine.embed_image(image)
            except ImageReadError as exc:
                raise HTTPException(400, f"the uploaded file is not a readable image: {exc}") from None
            photos = index.search_photos(vector, k)[0]
            sentences = index.search_captions(vector, k)[0] if index.has_captions else []
            return image.width, image.height, photos, sentences, (time.perf_counter() - t) * 1000

        width, height, photos, sentences, took = await asyncio.get_running_loop().run_in_executor(upload_pool, decode_and_search)
        from itmatch.retrieval.engine import photo_hits, sentence_hits

        return {
            "query": {"filename": file.filename, "bytes": len(data), "width": width, "height": height},
            "k": k,
            "took_ms": round(took, 2),
            "photos": [hit_json(h) for h in photo_hits(photos)],
            "sentences": [hit_json(h) for h in sentence_hits(sentences)],
        }

    @app.get("/api/photos/{photo_id}/similar")
    def similar(photo_id: int, k: int = 10) -> dict[str, Any]:
        check_k(k)
        photo = index.photo(photo_id)
        if photo is None:
            raise HTTPException(404, f"no photo with id {photo_id} in the index")
        t = time.perf_counter()
        hits = engine.similar_photos(photo_id, k)
        took = (time.perf_counter() - t) * 1000
        return {"query": hit_json(Hit(0, 1.0, "photo", photo.id, photo.path)), "k": k, "took_ms": round(took, 2),
                "photos": [hit_json(h) for h in hits]}  # fmt: skip

    @app.get("/photos/{path:path}", include_in_schema=False)
    def photo_file(path: str) -> FileResponse:
        target, _ = indexed_file(path)
        return FileResponse(target, headers={"Cache-Control": "max-age=3600"})

    @app.get("/thumbs/{path:path}", include_in_schema=False)
    def thumb_file(path: str) -> Response:
        target, photo = indexed_file(path)
        key = (photo.path, target.stat().st_mtime_ns)
        body = thumbs.get(key)
        if body is None:
            try:
                body = _thumbnail(target, thumb_size)
            except Exception:  # PIL raises many types for a file that changed since indexing
                raise HTTPException(404, "the photo can no longer be read") from None
            thumbs.put(key, body)
        return Response(body, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


def _decode_image(data: bytes, max_pixels: int, http_error: Any) -> Any:
    """Bytes -> an RGB PIL image (EXIF orientation applied); 413 over ``max_pixels``, 400 when not an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # over PIL's own limit (~179 MP): too large, not unreadable
        raise http_error(413, f"image too large: over {2 * Image.MAX_IMAGE_PIXELS} pixels, the limit is {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise http_error(400, "the uploaded file is not an image PIL can read (JPEG, PNG, WebP, ...)") from None
    if img.width * img.height > max_pixels:
        raise http_error(413, f"image too large: {img.width} x {img.height} pixels, the limit is {max_pixels} pixels")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Exception:  # truncated or corrupt data: PIL raises OSError, SyntaxError, ...
        raise http_error(400, "the uploaded image is corrupt or truncated") from None
    return img


def _thumbnail(path: Path, size: int) -> bytes:
    from PIL import Image, ImageOps

    from itmatch.features.preprocess import _to_rgb

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
        img = _to_rgb(ImageOps.exif_transpose(img))
        img.thumbnail((size, size))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
        return out.getvalue()


# --- the HTTP server --------------------------------------------------------------------------------


def guarded_http_protocol(max_connections: int, header_timeout: float) -> type:
    """uvicorn's HTTP/1.1 protocol with two guards against slow or numerous clients (slowloris):
    a connection that has not sent a complete request header ``header_timeout`` seconds after it
    opened (or after its last response) is closed, and connections beyond ``max_connections``
    are closed at once, so they cannot hold the server's file descriptors. Refusals are logged
    once per episode, not once per connection."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    log = logging.getLogger("uvicorn.error")
    episode = {"refusing": False, "refused": 0}

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _waiting_for: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            open_now = len(self.connections)
            if open_now > max_connections:
                episode["refused"] += 1
                if not episode["refusing"]:
                    episode["refusing"] = True
                    log.warning("refusing new connections: %d are open, the limit is %d (--max-connections); "
                                "further refusals are not logged until connections fall below it", open_now - 1, max_connections)  # fmt: skip
                transport.abort()  # frees the file descriptor now
                return
            if episode["refusing"] and open_now < max_connections:
                log.warning("accepting connections again (%d refused)", episode["refused"])
                episode.update(refusing=False, refused=0)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._waiting_for = self.cycle  # a new request replaces self.cycle when its headers are in
            self._header_timer = self.loop.call_later(header_timeout, self._header_deadline)

        def _header_deadline(self) -> None:
            self._header_timer = None
            if self.cycle is self._waiting_for and not self.transport.is_closing():
                self.transport.abort()

    return GuardedH11Protocol


class _OncePerMinute(logging.Filter):
    """Lets through the first of a repeated message, then at most one a minute (asyncio logs
    every failed accept() when file descriptors run out: megabytes a second)."""

    def __init__(self, needle: str):
        super().__init__()
        self.needle = needle
        self.last = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if self.needle not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self.last < 60:
            return False
        self.last = now
        return True


def make_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "warning",
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT,
) -> Any:
    """A ``uvicorn.Server`` for ``app`` with the guards of :func:`guarded_http_protocol`
    (``.run()`` serves until Ctrl-C or ``should_exit``)."""
    import uvicorn

    if max_connections < 1 or header_timeout <= 0:
        raise ItmatchError("max_connections must be >= 1 and header_timeout > 0")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=keep_alive_timeout,
                            http=guarded_http_protocol(max_connections, header_timeout))  # fmt: skip
    return uvicorn.Server(config)


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve ``app`` (see :func:`make_server` for the options) until Ctrl-C."""
    server = make_server(app, host, port, **options)
    _raise_file_limit(int(options.get("max_connections", DEFAULT_MAX_CONNECTIONS)))
    asyncio_log = logging.getLogger("asyncio")
    guard = _OncePerMinute("socket.accept() out of system resource")
    asyncio_log.addFilter(guard)
    try:
        server.run()
    finally:
        asyncio_log.removeFilter(guard)


def _raise_file_limit(max_connections: int) -> None:
    """Room for the connections, the photos being served and the model's files."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass
