"""Captions for generated scenes: a small grammar with varied wording.

Each of an image's five captions comes from a different *kind* (what it talks about) and a
random *frame* (how it says it), with synonyms for colours, shapes, sizes, backgrounds and
relations. Like people's captions, most mention only part of the scene: the biggest object, one
object and where it is, a relation between two objects, the background, how many objects
there are. One caption per image lists every object, so the five together usually pin the
scene down. Every statement is true of the scene's metadata (see tests/test_synth.py, which
parses captions back into claims and checks them).

Wording rules the checker relies on: noun phrases are ``a|an [size] [colour] noun``; counts are
``number [size] [colour] noun``; a region phrase ("in the top left corner") belongs to the noun
phrase before it (or after it, when the caption starts with it); a relation phrase ("to the
left of") links the noun phrase before it (subject) to the one after it; background words are
their own vocabulary; noun phrases in one caption are distinct objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from itmatch.data.corpus import CAPTIONS_PER_IMAGE
from itmatch.synth.scenes import Scene, SceneObject, relations

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson"),
    "orange": ("orange",),
    "yellow": ("yellow", "golden"),
    "green": ("green",),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "pink": ("pink",),
}
# (singular, plural) nouns per shape.
SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (("circle", "circles"), ("disc", "discs")),
    "square": (("square", "squares"), ("block", "blocks")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "cross": (("cross", "crosses"), ("plus", "pluses")),
    "ring": (("ring", "rings"), ("hoop", "hoops")),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
}
GENERIC_NOUNS: tuple[tuple[str, str], ...] = (("shape", "shapes"), ("object", "objects"), ("thing", "things"))
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "white": ("white",),
    "grey": ("grey", "gray"),
    "black": ("black", "dark"),
    "beige": ("beige", "cream"),
}
TEXTURE_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "plain": ("plain",),
    "stripes": ("striped", "stripy"),
    "dots": ("dotted", "spotted"),
    "checkered": ("checkered", "chequered"),
}
TEXTURE_NOUNS: dict[str, tuple[str, ...]] = {
    "stripes": ("stripes",),
    "dots": ("dots", "spots"),
    "checkered": ("checks",),
}
BACKGROUND_NOUNS: tuple[str, ...] = ("background", "backdrop")
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
REGION_PHRASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("centre", "middle"): ("in the centre", "in the middle", "in the center"),
    ("left", "middle"): ("on the left", "on the left side"),
    ("right", "middle"): ("on the right", "on the right side"),
    ("centre", "top"): ("at the top", "in the top middle"),
    ("centre", "bottom"): ("at the bottom", "in the bottom middle"),
    ("left", "top"): ("in the top left corner", "in the upper left corner", "at the top left"),
    ("right", "top"): ("in the top right corner", "in the upper right corner", "at the top right"),
    ("left", "bottom"): ("in the bottom left corner", "in the lower left corner", "at the bottom left"),
    ("right", "bottom"): ("in the bottom right corner", "in the lower right corner", "at the bottom right"),
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left_of": ("to the left of", "left of"),
    "right_of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "next_to": ("next to", "beside", "near"),
}
# How much detail a noun phrase carries, with probabilities per use.
_DETAIL_SALIENT = {"size colour": 0.35, "colour": 0.45, "size": 0.1, "": 0.1}
_DETAIL_LIST = {"size colour": 0.4, "colour": 0.6}
_DETAIL_RELATION = {"size colour": 0.2, "colour": 0.55, "size": 0.05, "": 0.1, "colour generic": 0.1}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _pick_weighted(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun_phrase(obj: SceneObject, rng: np.random.Generator, detail: dict[str, float]) -> str:
    """``a [size] [colour] noun`` for ``obj``; ``detail`` weights which attributes are named."""
    level = _pick_weighted(rng, detail).split()
    words = []
    if "size" in level:
        words.append(_pick(rng, SIZE_WORDS[obj.size]))
    if "colour" in level:
        words.append(_pick(rng, COLOUR_WORDS[obj.colour]))
    nouns = GENERIC_NOUNS if "generic" in level else SHAPE_WORDS[obj.shape]
    words.append(nouns[int(rng.integers(0, len(nouns)))][0])
    return _article(" ".join(words))


def _background_phrase(scene: Scene, rng: np.random.Generator, with_form: bool = True) -> str:
    """``a [texture] colour background`` or (when ``with_form``) ``a colour background with <texture>``."""
    colour = _pick(rng, BACKGROUND_WORDS[scene.background])
    noun = _pick(rng, BACKGROUND_NOUNS)
    if scene.texture == "plain":
        return _article(f"plain {colour} {noun}" if rng.random() < 0.5 else f"{colour} {noun}")
    adjective = _pick(rng, TEXTURE_ADJECTIVES[scene.texture])
    form = int(rng.integers(0, 3 if with_form else 2))
    if form == 0:
        return _article(f"{adjective} {colour} {noun}")
    if form == 1:
        return _article(f"{colour} {adjective} {noun}")
    return _article(f"{colour} {noun} with {_pick(rng, TEXTURE_NOUNS[scene.texture])}")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _generic_plural(rng: np.random.Generator, n: int) -> str:
    singular, plural = GENERIC_NOUNS[int(rng.integers(0, len(GENERIC_NOUNS)))]
    return singular if n == 1 else plural


def _count_phrase(n: int, rng: np.random.Generator) -> str:
    """``three shapes``, ``a single object``."""
    noun = _generic_plural(rng, n)
    if n == 1:
        return _pick(rng, (f"a single {noun}", f"just one {noun}", f"only one {noun}"))
    return f"{NUMBER_WORDS[n]} {noun}"


def _largest(scene: Scene) -> SceneObject:
    return max(scene.objects, key=lambda o: o.radius)


def _random_object(scene: Scene, rng: np.random.Generator) -> SceneObject:
    """Large objects are picked twice as often as small ones (people mention what stands out)."""
    weights = np.array([2.0 if o.size == "large" else 1.0 for o in scene.objects])
    return scene.objects[int(rng.choice(len(scene.objects), p=weights / weights.sum()))]


# --- caption kinds: each returns a caption (lower case, no final full stop) or None --------------


def _salient(scene: Scene, rng: np.random.Generator) -> str | None:
    a = _noun_phrase(_largest(scene), rng, _DETAIL_SALIENT)
    frame = _pick(rng, ("{a}", "there is {a}", "a picture of {a}", "an image showing {a}", "{a} can be seen"))
    return frame.format(a=a)


def _object_background(scene: Scene, rng: np.random.Generator) -> str | None:
    a = _noun_phrase(_random_object(scene, rng), rng, _DETAIL_LIST)
    frame = _pick(rng, ("{a} on {bg}", "{a} against {bg}", "{a} in front of {bg}", "there is {a} on {bg}"))
    return frame.format(a=a, bg=_background_phrase(scene, rng))


def _relation(scene: Scene, rng: np.random.Generator) -> str | None:
    facts = relations(scene)
    if not facts:
        return None
    i, rel, j = facts[int(rng.integers(0, len(facts)))]
    a = _noun_phrase(scene.objects[i], rng, _DETAIL_RELATION)
    b = _noun_phrase(scene.objects[j], rng, _DETAIL_RELATION)
    frame = _pick(rng, ("{a} {r} {b}", "{a} is {r} {b}", "there is {a} {r} {b}", "{a} sits {r} {b}"))
    return frame.format(a=a, b=b, r=_pick(rng, RELATION_PHRASES[rel]))


def _region(scene: Scene, rng: np.random.Generator) -> str | None:
    obj = _random_object(scene, rng)
    a = _noun_phrase(obj, rng, _DETAIL_LIST)
    where = _pick(rng, REGION_PHRASES[(obj.column, obj.row)])
    frame = _pick(rng, ("{a} {p}", "{a} is {p}", "{p} there is {a}", "{a} sits {p}"))
    return frame.format(a=a, p=where)


def _count(scene: Scene, rng: np.random.Generator) -> str | None:
    n = len(scene.objects)
    c = _count_phrase(n, rng)
    frames = ("{c} on {bg}", "a picture with {c}", "{c} in the picture")
    if n > 1:
        frames += ("there are {c}", "{c} on {bg}")
    return _pick(rng, frames).format(c=c, bg=_background_phrase(scene, rng))


def _listing(scene: Scene, rng: np.random.Generator) -> str | None:
    objects = [scene.objects[int(k)] for k in rng.permutation(len(scene.objects))]
    items = _join([_noun_phrase(o, rng, _DETAIL_LIST) for o in objects])
    n = len(objects)
    if n == 1:
        frames: tuple[str, ...] = ("only {l} on {bg}", "{l} alone on {bg}", "{c}: {l}")
    else:
        frames = ("{l}", "{l} on {bg}", "{c}: {l}", "there are {c}: {l}", "{c} on {bg}: {l}")
    return _pick(rng, frames).format(l=items, c=_count_phrase(n, rng), bg=_background_phrase(scene, rng))


def _attribute_count(scene: Scene, rng: np.random.Generator) -> str | None:
    """``two red shapes``, ``three stars``: exact counts of a colour or a shape seen at least twice."""
    options: list[str] = []
    for colour, words in COLOUR_WORDS.items():
        n = sum(o.colour == colour for o in scene.objects)
        if n >= 2:
            options.append(f"{NUMBER_WORDS[n]} {_pick(rng, words)} {_generic_plural(rng, n)}")
    for shape, nouns in SHAPE_WORDS.items():
        n = sum(o.shape == shape for o in scene.objects)
        if n >= 2:
            options.append(f"{NUMBER_WORDS[n]} {nouns[int(rng.integers(0, len(nouns)))][1]}")
    if not options:
        return None
    frame = _pick(rng, ("{c}", "there are {c}", "{c} on {bg}", "a picture with {c}"))
    return frame.format(c=_pick(rng, options), bg=_background_phrase(scene, rng))


def _background(scene: Scene, rng: np.random.Generator) -> str | None:
    bg = _background_phrase(scene, rng, with_form=False)
    colour = _pick(rng, BACKGROUND_WORDS[scene.background])
    texture = "" if scene.texture == "plain" else " with " + _pick(rng, TEXTURE_NOUNS[scene.texture])
    frames = [
        "{bg} with {c} on it",
        "{bg} with {a} on it",
        "the background is {colour}{texture} and there is {a}",
    ]
    if len(scene.objects) >= 2:
        frames.append("{a} and {b} on {bg}")
    objects = [scene.objects[int(k)] for k in rng.permutation(len(scene.objects))]
    a = _noun_phrase(objects[0], rng, _DETAIL_LIST)
    b = _noun_phrase(objects[-1], rng, _DETAIL_LIST)
    return _pick(rng, frames).format(
        bg=bg, c=_count_phrase(len(scene.objects), rng), a=a, b=b, colour=colour, texture=texture
    )


CaptionKind = Callable[[Scene, np.random.Generator], "str | None"]
CAPTION_KINDS: dict[str, CaptionKind] = {
    "listing": _listing,
    "salient": _salient,
    "object_background": _object_background,
    "relation": _relation,
    "region": _region,
    "count": _count,
    "attribute_count": _attribute_count,
    "background": _background,
}
# Chance weights for the four captions besides the listing.
_KIND_WEIGHTS = {
    "salient": 1.0,
    "object_background": 1.0,
    "relation": 1.6,
    "region": 1.0,
    "count": 0.6,
    "attribute_count": 0.8,
    "background": 0.8,
}


def _applicable(kind: str, scene: Scene) -> bool:
    if kind == "relation":
        return bool(relations(scene))
    if kind == "attribute_count":
        colours = [o.colour for o in scene.objects]
        shapes = [o.shape for o in scene.objects]
        return len(set(colours)) < len(colours) or len(set(shapes)) < len(shapes)
    return True


def _finish(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def describe(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Five different true captions of ``scene``: one lists every object, four mention parts of it.

    The listing is one of five randomly ordered captions; the other four are of distinct kinds
    (a relation may be used twice, for two different pairs, in scenes of three or more objects).
    """
    kinds = [k for k in _KIND_WEIGHTS if _applicable(k, scene)]
    pool = kinds + (["relation"] if "relation" in kinds and len(scene.objects) >= 3 else [])
    weights = np.array([_KIND_WEIGHTS[k] for k in pool])
    chosen = ["listing"] + [
        pool[int(k)] for k in rng.choice(len(pool), size=len(pool), replace=False, p=weights / weights.sum())
    ]
    captions: list[str] = []
    for kind in chosen:
        for _ in range(10):
            text = CAPTION_KINDS[kind](scene, rng)
            if text is not None and _finish(text) not in captions:
                captions.append(_finish(text))
                break
        if len(captions) == CAPTIONS_PER_IMAGE:
            break
    for _ in range(1000):  # every kind ran out of new wordings: very rare
        if len(captions) == CAPTIONS_PER_IMAGE:
            break
        text = CAPTION_KINDS[_pick(rng, kinds)](scene, rng)
        if text is not None and _finish(text) not in captions:
            captions.append(_finish(text))
    else:
        raise RuntimeError(f"could not write {CAPTIONS_PER_IMAGE} different captions for {scene}")
    return [captions[int(k)] for k in rng.permutation(CAPTIONS_PER_IMAGE)]
