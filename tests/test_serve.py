"""The HTTP service through FastAPI's TestClient: every endpoint, every bad input, no path traversal,
and the model and index loaded once at start."""

from __future__ import annotations

import io
import os
import re

import pytest
from PIL import Image

from itmatch.retrieval import IndexModelMismatchError, SearchEngine
from itmatch.retrieval.service import STATIC_DIR, create_app

from test_retrieval_support import N_INDEXED, search_setup

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    return search_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(setup):
    return SearchEngine.open(setup.index)


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(create_app(engine=engine, max_k=50, max_upload_bytes=200_000, max_image_pixels=1_000_000),
                      base_url="http://localhost")  # a loopback name: the app answers no other Host


def png_bytes(size=(64, 64), colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def test_health(client, setup):
    r = client.get("/api/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["photos"] == N_INDEXED and h["sentences"] == 160 and h["embed_dim"] == 32
    assert h["model"]["checkpoint_sha256"] == setup.summary["model"]["checkpoint_sha256"]
    assert h["search"] == {"method": "exact"}
    assert h["limits"] == {"max_k": 50, "max_query_chars": 500, "max_upload_bytes": 200_000, "max_image_pixels": 1_000_000}


def test_text_search_get_and_post(client):
    r = client.get("/api/search/text", params={"q": "a small blue circle", "k": 4})
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == "a small blue circle" and body["k"] == 4 and len(body["photos"]) == 4
    scores = [p["score"] for p in body["photos"]]
    assert scores == sorted(scores, reverse=True) and [p["rank"] for p in body["photos"]] == [1, 2, 3, 4]
    for p in body["photos"]:
        assert p["kind"] == "photo" and p["url"] == "/photos/" + p["path"] and p["thumb_url"] == "/thumbs/" + p["path"]
    r2 = client.post("/api/search/text", json={"query": "  a small blue circle ", "k": 4})
    assert r2.status_code == 200 and [p["path"] for p in r2.json()["photos"]] == [p["path"] for p in body["photos"]]
    assert len(client.get("/api/search/text", params={"q": "shapes"}).json()["photos"]) == 10  # default k


def test_photo_files_and_thumbnails_are_served(client, setup):
    hit = client.get("/api/search/text", params={"q": "a shape", "k": 1}).json()["photos"][0]
    r = client.get(hit["url"])
    assert r.status_code == 200 and r.content == (setup.photos / hit["path"]).read_bytes()
    t = client.get(hit["thumb_url"])
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(t.content))
    assert thumb.format == "JPEG" and max(thumb.size) <= 256
    assert client.get(hit["thumb_url"]).content == t.content  # cached
    sub = next(p for p in engine_paths(client) if p.startswith("sub/"))
    assert client.get(f"/photos/{sub}").status_code == 200


def engine_paths(client) -> list[str]:
    return [p["path"] for p in client.get("/api/search/text", params={"q": "a shape", "k": 50}).json()["photos"]]


@pytest.mark.parametrize(
    "params, status, message",
    [
        ({"q": ""}, 400, "empty"),
        ({"q": "   "}, 400, "empty"),
        ({"q": "x" * 501}, 400, "limit is 500"),
        ({"q": "a dog", "k": 0}, 400, "between 1 and 50"),
        ({"q": "a dog", "k": 51}, 400, "between 1 and 50"),
        ({"q": "a dog", "k": -3}, 400, "between 1 and 50"),
        ({"q": "a dog", "k": "ten"}, 422, "integer"),
        ({"k": 5}, 422, "Field required"),
    ],
)
def test_bad_text_queries(client, params, status, message):
    r = client.get("/api/search/text", params=params)
    assert r.status_code == status and message in str(r.json()["detail"])


@pytest.mark.parametrize(
    "body, status",
    [({"query": "", "k": 3}, 400), ({"query": "y" * 600}, 400), ({"query": "a cat", "k": 1000}, 400),
     ({"k": 3}, 422), ({"query": 12}, 422)],
)  # fmt: skip
def test_bad_json_text_queries(client, body, status):
    assert client.post("/api/search/text", json=body).status_code == status
    assert client.post("/api/search/text", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


def test_image_search_returns_photos_and_sentences(client, setup):
    some = sorted(setup.photos.glob("*.png"))[0]
    r = client.post("/api/search/image", files={"file": (some.name, some.read_bytes(), "image/png")}, data={"k": "3"})
    assert r.status_code == 200
    body = r.json()
    assert body["query"]["filename"] == some.name and body["query"]["width"] == 64
    assert len(body["photos"]) == 3 and body["photos"][0]["path"] == some.name  # finds itself first
    assert body["photos"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(body["sentences"]) == 3 and all(s["kind"] == "sentence" and s["text"] for s in body["sentences"])
    # A JPEG with no declared type (application/octet-stream) is accepted too.
    jpeg = io.BytesIO()
    Image.open(some).convert("RGB").save(jpeg, format="JPEG")
    r = client.post("/api/search/image", files={"file": ("q", jpeg.getvalue(), "application/octet-stream")})
    assert r.status_code == 200 and len(r.json()["photos"]) == 10


def test_bad_uploads(client, engine):
    ok = png_bytes()
    post = client.post
    # Too large: by Content-Length, before the body is read.
    big = b"\0" * 300_000
    r = post("/api/search/image", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "limit is 200000 bytes" in r.json()["detail"]
    # Too large without a Content-Length (chunked upload): counted while streaming.
    boundary = "xyzzy"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()  # fmt: skip
    chunks = iter([head, *[b"\0" * 50_000] * 6, f"\r\n--{boundary}--\r\n".encode()])
    r = post("/api/search/image", content=chunks, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413
    # Too many pixels (a small file that decodes to a huge image).
    r = post("/api/search/image", files={"file": ("huge.png", png_bytes((2000, 1000), (0, 0, 0)), "image/png")})
    assert r.status_code == 413 and "2000 x 1000 pixels" in r.json()["detail"]
    # Not an image by declared type, or by content.
    r = post("/api/search/image", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert r.status_code == 415 and "text/plain" in r.json()["detail"]
    r = post("/api/search/image", files={"file": ("x.pdf", b"%PDF-1.4", "application/pdf")})
    assert r.status_code == 415
    r = post("/api/search/image", files={"file": ("fake.png", b"GIF89a not really", "image/png")})
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    r = post("/api/search/image", files={"file": ("cut.png", ok[: len(ok) // 2], "image/png")})
    assert r.status_code == 400
    r = post("/api/search/image", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    # Missing file, bad k.
    assert post("/api/search/image", data={"k": "3"}).status_code == 422
    for k in ("0", "51"):
        r = post("/api/search/image", files={"file": ("a.png", ok, "image/png")}, data={"k": k})
        assert r.status_code == 400
    assert post("/api/search/image", files={"file": ("a.png", ok, "image/png")}, data={"k": "x"}).status_code == 422
    # The service still answers after all that.
    assert client.get("/api/health").status_code == 200


def test_similar_photos(client):
    paths = engine_paths(client)
    hit = client.get("/api/search/text", params={"q": "a shape", "k": 1}).json()["photos"][0]
    r = client.get(f"/api/photos/{hit['id']}/similar", params={"k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["query"]["path"] == hit["path"] and len(body["photos"]) == 5
    assert hit["path"] not in [p["path"] for p in body["photos"]] and set(p["path"] for p in body["photos"]) <= set(paths)
    assert client.get("/api/photos/99999/similar").status_code == 404
    assert client.get("/api/photos/abc/similar").status_code == 422
    assert client.get(f"/api/photos/{hit['id']}/similar", params={"k": 0}).status_code == 400


@pytest.mark.parametrize(
    "url",
    [
        "/photos/../../../../etc/passwd",
        "/photos/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/photos/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/photos/%2Fetc%2Fpasswd",
        "/photos//etc/passwd",
        "/thumbs/..%2F..%2F..%2Fetc%2Fpasswd",
        "/photos/sub/..%2F..%2Findex%2Findex.json",
        "/photos/notes.txt",  # in the folder, not a photo
        "/photos/broken.jpg",  # in the folder, not indexed (unreadable)
        "/photos/.hidden/hidden.png",  # in the folder, not indexed (hidden)
        "/photos/missing.png",
        "/thumbs/notes.txt",
    ],
)
def test_no_file_outside_the_index_is_served(client, url):
    r = client.get(url)
    assert r.status_code == 404, (url, r.status_code, r.content[:100])
    assert b"root:" not in r.content and b"precious" not in r.content


def test_a_photo_swapped_for_a_link_outside_is_not_served(setup, engine, tmp_path):
    # An indexed file replaced (after indexing) by a symlink to a file outside the folder.
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    victim = engine.index.photos[0]
    path = setup.photos / victim.path
    backup = path.read_bytes()
    try:
        path.unlink()
        os.symlink(secret, path)
        c = TestClient(create_app(engine=engine), base_url="http://localhost")
        assert c.get(f"/photos/{victim.path}").status_code == 404
        assert c.get(f"/thumbs/{victim.path}").status_code == 404
    finally:
        path.unlink()
        path.write_bytes(backup)
        os.utime(path, ns=(victim.mtime_ns, victim.mtime_ns))


def test_page_and_static_files_need_nothing_from_outside(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in r.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/../service.py").status_code == 404
    for f in STATIC_DIR.iterdir():  # no CDN, fonts or analytics: the page works offline
        assert not re.search(r"https?://", f.read_text()), f
    assert client.get("/api/openapi.json").status_code == 200


def test_model_and_index_load_once_at_start(setup, monkeypatch):
    from itmatch.inference import Matcher
    from itmatch.retrieval import PhotoIndex

    calls = {"matcher": 0, "index": 0, "backbone": 0}
    real_matcher, real_index = Matcher.from_run.__func__, PhotoIndex.open.__func__
    import itmatch.features.backbones as backbones

    real_backbone = backbones.get_backbone

    def count(name, real):
        def wrapped(*a, **kw):
            calls[name] += 1
            return real(*a, **kw)

        return wrapped

    monkeypatch.setattr(Matcher, "from_run", classmethod(count("matcher", real_matcher)))
    monkeypatch.setattr(PhotoIndex, "open", classmethod(count("index", real_index)))
    monkeypatch.setattr(backbones, "get_backbone", count("backbone", real_backbone))
    client = TestClient(create_app(setup.index), base_url="http://localhost")
    assert calls == {"matcher": 1, "index": 1, "backbone": 1}  # the image backbone too, by the warm-up
    some = sorted(setup.photos.glob("*.png"))[0]
    for _ in range(3):
        assert client.get("/api/search/text", params={"q": "a red star"}).status_code == 200
        assert client.post("/api/search/image", files={"file": ("a.png", some.read_bytes(), "image/png")}).status_code == 200
    assert calls == {"matcher": 1, "index": 1, "backbone": 1}


def test_app_refuses_a_run_the_index_was_not_built_with(setup):
    with pytest.raises(IndexModelMismatchError):
        create_app(setup.index, run=setup.other_run)
