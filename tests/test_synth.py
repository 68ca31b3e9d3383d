"""The generated data set: deterministic, in Karpathy format, and every caption true of its image.

The caption checker below is written independently of ``itmatch.synth.captions``: it has its own
vocabulary (synonyms included), parses each caption into claims (objects with attributes, counts,
regions, relations, background) and verifies them against a "world": the scene metadata from
``scenes.json``, or what the rendered pixels show (object colours read from the image, bounding
boxes of the drawn shapes, background colour and texture). A word it does not know fails the
test, so the generator cannot say something the checker silently ignores.
"""

from __future__ import annotations

import colorsys
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itmatch.synth import Scene, describe, generate_dataset, render_scene, sample_scene

# --- the checker's own vocabulary -----------------------------------------------------------------

COLOUR = {
    "red": "red",
    "crimson": "red",
    "orange": "orange",
    "yellow": "yellow",
    "golden": "yellow",
    "green": "green",
    "cyan": "cyan",
    "turquoise": "cyan",
    "blue": "blue",
    "purple": "purple",
    "violet": "purple",
    "pink": "pink",
}
SHAPE = {
    "circle": "circle",
    "disc": "circle",
    "square": "square",
    "block": "square",
    "triangle": "triangle",
    "star": "star",
    "cross": "cross",
    "plus": "cross",
    "ring": "ring",
    "hoop": "ring",
    "diamond": "diamond",
    "rhombus": "diamond",
}
SHAPE_PLURAL = {
    "circles": "circle",
    "discs": "circle",
    "squares": "square",
    "blocks": "square",
    "triangles": "triangle",
    "stars": "star",
    "crosses": "cross",
    "pluses": "cross",
    "rings": "ring",
    "hoops": "ring",
    "diamonds": "diamond",
    "rhombuses": "diamond",
}
GENERIC = {"shape", "object", "thing"}
GENERIC_PLURAL = {"shapes", "objects", "things"}
SIZE = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
BG_COLOUR = {
    "white": "white",
    "grey": "grey",
    "gray": "grey",
    "black": "black",
    "dark": "black",
    "beige": "beige",
    "cream": "beige",
}
TEXTURE = {
    "plain": "plain",
    "striped": "stripes",
    "stripy": "stripes",
    "stripes": "stripes",
    "dotted": "dots",
    "spotted": "dots",
    "dots": "dots",
    "spots": "dots",
    "checkered": "checkered",
    "chequered": "checkered",
    "checks": "checkered",
}
BG_NOUN = {"background", "backdrop"}
NUMBER = {"one": 1, "single": 1, "two": 2, "three": 3, "four": 4}
RELATION = {
    "above": "above",
    "over": "above",
    "below": "below",
    "under": "below",
    "beneath": "below",
    "beside": "next_to",
    "near": "next_to",
}
REGION_COL = {"left": "left", "right": "right"}
REGION_ROW = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
REGION_CENTRE = {"centre", "center", "middle"}
REGION_FILLER = {"side", "corner"}
FILLER = {
    "a",
    "an",
    "the",
    "there",
    "is",
    "are",
    "on",
    "in",
    "at",
    "with",
    "and",
    "to",
    "of",
    "it",
    "picture",
    "image",
    "showing",
    "can",
    "be",
    "seen",
    "sits",
    "against",
    "front",
    "only",
    "just",
    "alone",
}
# Hue (degrees) of each named object colour, and reference RGB of each background colour.
HUE = {
    "red": 0,
    "orange": 30,
    "yellow": 53,
    "green": 125,
    "cyan": 183,
    "blue": 230,
    "purple": 280,
    "pink": 325,
}
BG_RGB = {"white": (240, 240, 240), "grey": (150, 150, 150), "black": (25, 25, 25), "beige": (220, 200, 160)}
NEXT_TO = 0.2  # "next to": bounding boxes at most this far apart (fraction of the image side)
SMALL_LARGE = 0.267  # rendered extent (fraction of the side) that separates small from large objects


# --- claims --------------------------------------------------------------------------------------


@dataclass
class NounPhrase:
    size: str | None
    colour: str | None
    shape: str | None  # None: a generic noun ("shape", "object", "thing")
    regions: list[tuple[str | None, str | None]] = field(default_factory=list)  # (column, row)


@dataclass
class Claims:
    nps: list[NounPhrase] = field(default_factory=list)
    relations: list[tuple[int, str, int]] = field(default_factory=list)  # (np index, relation, np index)
    counts: list[tuple[int, NounPhrase]] = field(default_factory=list)
    background: dict[str, str] = field(default_factory=dict)


def words_of(caption: str) -> list[str]:
    return re.findall(r"[a-z]+", caption.lower())


def _noun_phrase(words: list[str], i: int, plural: bool) -> tuple[NounPhrase | None, int]:
    size = colour = None
    if i < len(words) and words[i] in SIZE:
        size, i = SIZE[words[i]], i + 1
    if i < len(words) and words[i] in COLOUR:
        colour, i = COLOUR[words[i]], i + 1
    if i >= len(words):
        return None, i
    shapes, generic = (SHAPE_PLURAL, GENERIC_PLURAL) if plural else (SHAPE, GENERIC)
    if words[i] in shapes:
        return NounPhrase(size, colour, shapes[words[i]]), i + 1
    if words[i] in generic:
        return NounPhrase(size, colour, None), i + 1
    return None, i


def parse(caption: str) -> Claims:
    words = words_of(caption)
    claims = Claims()
    items: list[tuple[str, object]] = []  # ("np", index) | ("region", (col, row)) | ("rel", name)
    i = 0
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w in ("a", "an") and nxt not in NUMBER:
            np_, j = _noun_phrase(words, i + 1, plural=False)
            if np_ is not None:  # else an article of a filler noun: "a picture"
                claims.nps.append(np_)
                items.append(("np", len(claims.nps) - 1))
                i = j
                continue
        elif w in NUMBER:
            n = NUMBER[w]
            np_, j = _noun_phrase(words, i + 1, plural=n > 1)
            assert np_ is not None, f"number {w!r} without a noun in {caption!r}"
            claims.counts.append((n, np_))
            i = j
            continue
        elif w in REGION_COL and nxt == "of":
            items.append(("rel", f"{w}_of"))
            i += 2
            continue
        elif w == "next" and nxt == "to":
            items.append(("rel", "next_to"))
            i += 2
            continue
        elif w in RELATION:
            items.append(("rel", RELATION[w]))
        elif w in REGION_COL or w in REGION_ROW or w in REGION_CENTRE:
            col = row = None
            centre = False
            while i < len(words) and (
                words[i] in REGION_COL
                or words[i] in REGION_ROW
                or words[i] in REGION_CENTRE
                or words[i] in REGION_FILLER
            ):
                col = REGION_COL.get(words[i], col)
                row = REGION_ROW.get(words[i], row)
                centre |= words[i] in REGION_CENTRE
                i += 1
            if centre:
                col, row = col or "centre", row or "middle"
            items.append(("region", (col, row)))
            continue
        elif w in BG_COLOUR or w in TEXTURE:
            key, value = ("colour", BG_COLOUR[w]) if w in BG_COLOUR else ("texture", TEXTURE[w])
            assert claims.background.get(key, value) == value, f"two background {key}s in {caption!r}"
            claims.background[key] = value
        elif w not in FILLER and w not in BG_NOUN and w not in ("a", "an"):
            raise AssertionError(f"word {w!r} not understood (or out of place) in {caption!r}")
        i += 1

    np_positions = [k for k, (kind, _) in enumerate(items) if kind == "np"]
    for k, (kind, value) in enumerate(items):
        before = [items[p][1] for p in np_positions if p < k]
        after = [items[p][1] for p in np_positions if p > k]
        if kind == "region":
            target = before[-1] if before else after[0] if after else None
            assert target is not None, f"region phrase without an object in {caption!r}"
            claims.nps[target].regions.append(value)
        elif kind == "rel":
            assert before and after, f"relation {value!r} needs an object on each side in {caption!r}"
            claims.relations.append((before[-1], value, after[0]))
    return claims


# --- worlds: what a caption is checked against ---------------------------------------------------


@dataclass
class WorldObject:
    shape: str
    colour: str
    size: str
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the side, y downwards


@dataclass
class World:
    objects: list[WorldObject]
    background: dict[str, str]  # "colour", "texture" (texture may be "textured" for rendered worlds)


def metadata_world(scene: dict) -> World:
    objects = [WorldObject(o["shape"], o["colour"], o["size"], tuple(o["bbox"])) for o in scene["objects"]]
    return World(objects, dict(scene["background"]))


def _centre(o: WorldObject) -> tuple[float, float]:
    return (o.bbox[0] + o.bbox[2]) / 2, (o.bbox[1] + o.bbox[3]) / 2


def region_of(o: WorldObject) -> tuple[str, str]:
    cx, cy = _centre(o)
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    return col, row


def holds(a: WorldObject, relation: str, b: WorldObject) -> bool:
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    if relation == "left_of":
        return a.bbox[2] < b.bbox[0] and bx - ax >= 0.5 * abs(by - ay)
    if relation == "right_of":
        return holds(b, "left_of", a)
    if relation == "above":
        return a.bbox[3] < b.bbox[1] and by - ay >= 0.5 * abs(bx - ax)
    if relation == "below":
        return holds(b, "above", a)
    if relation == "next_to":
        gap_x = max(0.0, a.bbox[0] - b.bbox[2], b.bbox[0] - a.bbox[2])
        gap_y = max(0.0, a.bbox[1] - b.bbox[3], b.bbox[1] - a.bbox[3])
        return float(np.hypot(gap_x, gap_y)) <= NEXT_TO
    raise AssertionError(f"unknown relation {relation!r}")


def matches(np_: NounPhrase, o: WorldObject) -> bool:
    return (
        (np_.size is None or np_.size == o.size)
        and (np_.colour is None or np_.colour == o.colour)
        and (np_.shape is None or np_.shape == o.shape)
        and all(
            (col is None or col == region_of(o)[0]) and (row is None or row == region_of(o)[1])
            for col, row in np_.regions
        )
    )


def false_claims(claims: Claims, world: World) -> list[str]:
    """What in ``claims`` is false of ``world`` (empty: the caption is true)."""
    problems = []
    for key, value in claims.background.items():
        actual = world.background[key]
        if key == "texture" and actual == "textured":
            ok = value != "plain"
        else:
            ok = actual == value
        if not ok:
            problems.append(f"background {key} {value!r} but it is {actual!r}")
    for n, np_ in claims.counts:
        actual = sum(matches(np_, o) for o in world.objects)
        if actual != n:
            problems.append(f"count {n} of {np_} but there are {actual}")
    found = any(
        all(matches(np_, world.objects[k]) for np_, k in zip(claims.nps, chosen))
        and all(
            holds(world.objects[chosen[a]], rel, world.objects[chosen[b]]) for a, rel, b in claims.relations
        )
        for chosen in itertools.permutations(range(len(world.objects)), len(claims.nps))
    )
    if not found:
        problems.append(f"no distinct objects fit {claims.nps} with relations {claims.relations}")
    return problems


def rendered_world(image: np.ndarray, scene: dict) -> World:
    """Colours, bounding boxes and background as the pixels show them (shape and size from metadata)."""
    side = image.shape[0]
    ys, xs = np.mgrid[0:side, 0:side] + 0.5
    pixels = image.astype(float)
    outside = np.ones((side, side), bool)
    objects = []
    for o in scene["objects"]:
        cx, cy, r = o["centre"][0] * side, o["centre"][1] * side, o["radius"] * side
        px, py = (cx + 0.775 * r, cy) if o["shape"] == "ring" else (cx, cy)  # a ring's centre is a hole
        probe = pixels[int(py) - 1 : int(py) + 2, int(px) - 1 : int(px) + 2].reshape(-1, 3).mean(0)
        hue, _, sat = colorsys.rgb_to_hls(*(probe / 255))
        assert sat > 0.35, f"object {o} is not saturated at its centre: {probe}"
        hue_deg = hue * 360
        colour = min(HUE, key=lambda c: min(abs(hue_deg - HUE[c]), 360 - abs(hue_deg - HUE[c])))
        disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= (r + 1) ** 2
        mask = disc & (np.abs(pixels - probe).max(axis=2) < 40)
        rows, cols = np.nonzero(mask)
        bbox = (cols.min() / side, rows.min() / side, (cols.max() + 1) / side, (rows.max() + 1) / side)
        objects.append(WorldObject(o["shape"], colour, o["size"], bbox))
        outside &= (xs - cx) ** 2 + (ys - cy) ** 2 > (r + 2) ** 2
    background = pixels[outside]
    mean = background.mean(0)
    bg_colour = min(BG_RGB, key=lambda c: float(np.linalg.norm(mean - np.array(BG_RGB[c]))))
    textured = float(background.std(0).max()) > 6.0
    return World(objects, {"colour": bg_colour, "texture": "textured" if textured else "plain"})


# --- fixtures --------------------------------------------------------------------------------------

SMALL = {"n_train": 24, "n_val": 8, "n_test": 8, "image_size": 128}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth") / "a", seed=3, **SMALL)


@pytest.fixture(scope="module")
def sampled() -> list[tuple[Scene, list[str]]]:
    """Many scenes and their captions, without rendering (fast)."""
    out = []
    for k in range(1500):
        scene_rng, caption_rng = (np.random.default_rng(s) for s in np.random.SeedSequence([11, k]).spawn(2))
        scene = sample_scene(scene_rng)
        out.append((scene, describe(scene, caption_rng)))
    return out


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- tests -----------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "b", seed=3, **SMALL)
    assert _folder_bytes(dataset.parent) == _folder_bytes(again.parent)
    other = generate_dataset(tmp_path / "c", seed=4, **SMALL)
    a, c = _folder_bytes(dataset.parent), _folder_bytes(other.parent)
    assert a["dataset_synth.json"] != c["dataset_synth.json"]
    assert sum(a[k] != c[k] for k in a if k.startswith("images/")) == 40


def test_generation_is_reused_or_redone(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    params = {"n_train": 5, "n_val": 2, "n_test": 2, "image_size": 64}
    path = generate_dataset(tmp_path, progress=lambda done, total: calls.append((done, total)), **params)
    assert calls == [(k, 9) for k in range(1, 10)]
    assert _load(tmp_path / "synth_params.json")["n_train"] == 5
    before = _folder_bytes(tmp_path)
    calls.clear()
    assert generate_dataset(tmp_path, progress=lambda d, t: calls.append((d, t)), **params) == path
    assert calls == [] and _folder_bytes(tmp_path) == before  # complete and same parameters: reused

    (tmp_path / "images" / "000003.png").unlink()  # incomplete: regenerated
    generate_dataset(tmp_path, progress=lambda d, t: calls.append((d, t)), **params)
    assert len(calls) == 9 and _folder_bytes(tmp_path) == before

    generate_dataset(tmp_path, **{**params, "n_train": 3})  # smaller: stale images removed
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{k:06d}.png" for k in range(7)]
    # A smaller data set starts with the same images as the bigger one (per-image seeds).
    assert all(
        _folder_bytes(tmp_path)[f"images/{k:06d}.png"] == before[f"images/{k:06d}.png"] for k in range(7)
    )


def test_bad_parameters_are_refused(tmp_path: Path) -> None:
    for bad in ({"n_train": -1}, {"seed": -2}, {"image_size": 16}, {"n_train": 0, "n_val": 0, "n_test": 0}):
        with pytest.raises(ValueError):
            generate_dataset(tmp_path, **bad)


def test_karpathy_format(dataset: Path) -> None:
    data = _load(dataset)
    assert data["dataset"] == "synth"
    images = data["images"]
    assert Counter(im["split"] for im in images) == {"train": 24, "val": 8, "test": 8}
    sentids = []
    for k, im in enumerate(images):
        assert im["imgid"] == k and im["filename"] == f"{k:06d}.png"
        with Image.open(dataset.parent / "images" / im["filename"]) as picture:
            assert picture.size == (128, 128) and picture.mode == "RGB"
        assert len(im["sentences"]) == 5 and im["sentids"] == [s["sentid"] for s in im["sentences"]]
        assert len({s["raw"] for s in im["sentences"]}) == 5, im["sentences"]
        for s in im["sentences"]:
            assert s["imgid"] == k
            assert s["tokens"] == words_of(s["raw"]) and s["tokens"], s
        sentids += im["sentids"]
    assert sorted(sentids) == list(range(5 * len(images)))
    scenes = _load(dataset.parent / "scenes.json")["scenes"]
    assert [(s["imgid"], s["filename"], s["split"]) for s in scenes] == [
        (im["imgid"], im["filename"], im["split"]) for im in images
    ]


def test_project_reader_reads_it(dataset: Path) -> None:
    from itmatch.data.readers import read_karpathy

    test = read_karpathy(dataset, dataset.parent / "images", "test")
    assert len(test) == 8 and test.image_ids[0] == "000032.png"
    assert test.captions[0] == [s["raw"] for s in _load(dataset)["images"][32]["sentences"]]


def test_scene_metadata_round_trips(sampled: list[tuple[Scene, list[str]]]) -> None:
    for scene, _ in sampled[:200]:
        assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


def test_captions_are_true_of_scene_metadata(sampled: list[tuple[Scene, list[str]]]) -> None:
    for scene, captions in sampled:
        world = metadata_world(scene.to_dict())
        assert len(set(captions)) == 5
        for caption in captions:
            problems = false_claims(parse(caption), world)
            assert not problems, (caption, problems, scene)


def test_checker_catches_false_captions(sampled: list[tuple[Scene, list[str]]]) -> None:
    """The checker is not vacuous: captions of another scene are mostly false of this one."""
    false = sum(
        bool(false_claims(parse(caption), metadata_world(scene.to_dict())))
        for (scene, _), (_, other) in zip(sampled[:300], sampled[1:301])
        for caption in other
    )
    assert false > 0.6 * 300 * 5
    parsed = parse("A large crimson disc is to the left of a blue hoop, on a dotted grey backdrop.")
    assert parsed.nps == [NounPhrase("large", "red", "circle"), NounPhrase(None, "blue", "ring")]
    assert parsed.relations == [(0, "left_of", 1)] and parsed.background == {
        "texture": "dots",
        "colour": "grey",
    }
    parsed = parse("In the upper left corner there is a star. Two green things.")
    assert parsed.nps == [NounPhrase(None, None, "star", [("left", "top")])]
    assert parsed.counts == [(2, NounPhrase(None, "green", None))]
    with pytest.raises(AssertionError, match="not understood"):
        parse("A red circle with a hat.")


def test_captions_are_true_of_rendered_images(dataset: Path) -> None:
    scenes = _load(dataset.parent / "scenes.json")["scenes"]
    sentences = {im["imgid"]: [s["raw"] for s in im["sentences"]] for im in _load(dataset)["images"]}
    for scene in scenes:
        image = np.asarray(Image.open(dataset.parent / "images" / scene["filename"]).convert("RGB"))
        world = rendered_world(image, scene)
        meta = metadata_world(scene)
        assert world.background["colour"] == scene["background"]["colour"], scene
        assert (world.background["texture"] == "plain") == (scene["background"]["texture"] == "plain"), scene
        for seen, named in zip(world.objects, meta.objects):
            assert seen.colour == named.colour, (scene["filename"], seen, named)
            # The drawn shape lies inside its metadata box, and its extent shows its size category.
            tol = 1.5 / 128
            assert seen.bbox[0] > named.bbox[0] - tol and seen.bbox[1] > named.bbox[1] - tol, (seen, named)
            assert seen.bbox[2] < named.bbox[2] + tol and seen.bbox[3] < named.bbox[3] + tol, (seen, named)
            extent = max(seen.bbox[2] - seen.bbox[0], seen.bbox[3] - seen.bbox[1])
            assert (extent > SMALL_LARGE) == (named.size == "large"), (scene["filename"], extent, named)
            assert region_of(seen) == region_of(named)
        for caption in sentences[scene["imgid"]]:
            problems = false_claims(parse(caption), world)
            assert not problems, (scene["filename"], caption, problems)


def test_render_and_describe_are_deterministic() -> None:
    scene = sample_scene(np.random.default_rng(5))
    assert scene == sample_scene(np.random.default_rng(5))
    one = np.asarray(render_scene(scene, 96, np.random.default_rng(1)))
    assert np.array_equal(one, np.asarray(render_scene(scene, 96, np.random.default_rng(1))))
    assert not np.array_equal(one, np.asarray(render_scene(scene, 96, np.random.default_rng(2))))
    assert describe(scene, np.random.default_rng(1)) == describe(scene, np.random.default_rng(1))


SLOTS = [
    (COLOUR, "<colour>"),
    (SHAPE, "<shape>"),
    (SHAPE_PLURAL, "<shapes>"),
    (SIZE, "<size>"),
    (NUMBER, "<n>"),
    (BG_COLOUR, "<bg>"),
    (TEXTURE, "<texture>"),
    (GENERIC, "<shape>"),
    (GENERIC_PLURAL, "<shapes>"),
]


def _skeleton(caption: str) -> str:
    return " ".join(next((slot for vocab, slot in SLOTS if w in vocab), w) for w in words_of(caption))


def test_captions_vary(sampled: list[tuple[Scene, list[str]]]) -> None:
    captions = [c for _, caps in sampled for c in caps]
    skeletons = Counter(_skeleton(c) for c in captions)
    assert len(skeletons) > 150, len(skeletons)
    assert skeletons.most_common(1)[0][1] < 0.05 * len(captions), skeletons.most_common(5)
    vocabulary = {w for c in captions for w in words_of(c)}
    assert 60 <= len(vocabulary) <= 150, len(vocabulary)
    # Captions mention different parts of the scene: few captions name every object.
    names_all = sum(
        len(parse(c).nps) == len(scene.objects)
        for scene, caps in sampled
        for c in caps
        if len(scene.objects) > 1
    )
    assert names_all < 0.35 * sum(5 for scene, _ in sampled if len(scene.objects) > 1)
    assert sum(bool(parse(c).relations) for c in captions) > 0.1 * len(captions)
    assert sum(bool(parse(c).background) for c in captions) > 0.2 * len(captions)
    assert sum(bool(parse(c).counts) for c in captions) > 0.15 * len(captions)


def test_instance_level(sampled: list[tuple[Scene, list[str]]]) -> None:
    """Objects recur across scenes (a class is no answer), yet five captions usually pin a scene down."""
    combos = Counter((o.colour, o.shape) for scene, _ in sampled for o in set(scene.objects))
    assert len(combos) == 8 * 7 and min(combos.values()) >= 20, combos.most_common()[-3:]
    per_scene = [{(o.colour, o.shape) for o in scene.objects} for scene, _ in sampled]
    shared = sum(
        any(c in other for other in per_scene[:k] + per_scene[k + 1 :] for c in mine)
        for k, mine in enumerate(per_scene)
    )
    assert shared == len(sampled)
    texts = Counter(c for _, caps in sampled for c in set(caps))
    assert sum(n for n in texts.values() if n > 1) > 0.1 * 5 * len(
        sampled
    )  # many captions fit several scenes

    worlds = [metadata_world(scene.to_dict()) for scene, _ in sampled[:400]]
    identified = 0
    for _, captions in sampled[:60]:
        claims = [parse(c) for c in captions]
        fits = sum(all(not false_claims(cl, w) for cl in claims) for w in worlds)
        identified += fits == 1  # only the scene itself (it is among the 400)
    assert identified >= 0.8 * 60, identified
