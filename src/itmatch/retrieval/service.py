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
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations at
# runtime, and some name types defined inside create_app.
import io
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from itmatch.errors import ImageReadError, ItmatchError
from itmatch.retrieval.engine import DEFAULT_MAX_QUERY_CHARS, Hit, SearchEngine, clean_query

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_K = 100
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
DEFAULT_THUMB_SIZE = 256
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
) -> Any:
    """The FastAPI app over an index (``index_dir``, queried with ``run`` or the run recorded in
    the index), or over an already loaded ``engine``. Everything loads here, once."""
    from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel
    from starlette.concurrency import run_in_threadpool

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
        query: str
        k: int = 10

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
        image = _decode_image(data, max_image_pixels, HTTPException)
        t = time.perf_counter()
        try:
            vector = await run_in_threadpool(engine.embed_image, image)
        except ImageReadError as exc:
            raise HTTPException(400, f"the uploaded file is not a readable image: {exc}") from None
        photos = index.search_photos(vector, k)[0]
        sentences = index.search_captions(vector, k)[0] if index.has_captions else []
        took = (time.perf_counter() - t) * 1000
        from itmatch.retrieval.engine import photo_hits, sentence_hits

        return {
            "query": {"filename": file.filename, "bytes": len(data), "width": image.width, "height": image.height},
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
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
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
