"""Drawing a :class:`~itmatch.synth.scenes.Scene` with PIL.

Nuisance variation comes from the ``rng`` passed in, never from the scene: each object's shade
(+-14 per channel) and rotation (+-15 degrees; circles and rings are symmetric), the texture's
period, phase, orientation and contrast. (No pixel noise: it would make each PNG several times bigger.) None of it changes what a caption
may say: every shape stays inside its circle, its named colour stays the nearest palette colour.
Drawing happens at twice the size and is downsampled, for anti-aliased edges.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from itmatch.synth.scenes import BACKGROUND_COLOURS, COLOURS, Scene, SceneObject

SUPERSAMPLE = 2
SHADE_JITTER = 14
ROTATION_JITTER = 15.0  # degrees
RING_INNER = 0.55  # inner radius of a ring, as a fraction of its outer radius

Point = tuple[float, float]


def _unit_polygon(shape: str) -> list[Point]:
    """The outline of ``shape`` centred on its bounding box, every vertex within distance 1 of the origin."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.deg2rad([45, 135, 225, 315])]
    elif shape == "diamond":
        pts = [(0.0, -1.0), (0.7, 0.0), (0.0, 1.0), (-0.7, 0.0)]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    elif shape == "star":
        pts = []
        for k in range(10):
            a = math.radians(-90 + 36 * k)
            r = 1.0 if k % 2 == 0 else 0.45
            pts.append((r * math.cos(a), r * math.sin(a)))
    elif shape == "cross":
        a, w = 1.0, 0.36
        pts = [
            (-w, -a),
            (w, -a),
            (w, -w),
            (a, -w),
            (a, w),
            (w, w),
            (w, a),
            (-w, a),
            (-w, w),
            (-a, w),
            (-a, -w),
            (-w, -w),
        ]
    else:
        raise ValueError(f"{shape!r} is not drawn as a polygon")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    pts = [(x - mx, y - my) for x, y in pts]
    scale = max(math.hypot(x, y) for x, y in pts)
    return [(x / scale, y / scale) for x, y in pts]


_POLYGONS: dict[str, list[Point]] = {
    s: _unit_polygon(s) for s in ("square", "diamond", "triangle", "star", "cross")
}


def _shade(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    jitter = rng.integers(-SHADE_JITTER, SHADE_JITTER + 1, size=3)
    return tuple(int(min(255, max(0, c + int(d)))) for c, d in zip(rgb, jitter))  # type: ignore[return-value]


def _pattern_colour(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """A low-contrast shade of the background colour for its texture (lighter on dark grounds)."""
    delta = int(rng.integers(22, 36))
    sign = 1 if sum(rgb) < 3 * 128 else -1
    return tuple(int(min(255, max(0, c + sign * delta))) for c in rgb)  # type: ignore[return-value]


def _draw_texture(
    draw: ImageDraw.ImageDraw, side: int, texture: str, colour: tuple[int, int, int], rng: np.random.Generator
) -> None:
    if texture == "plain":
        return
    period = int(rng.integers(9, 15)) * SUPERSAMPLE
    phase = int(rng.integers(0, period))
    if texture == "stripes":
        width = period // 2
        orientation = int(rng.integers(0, 3))  # horizontal, vertical, diagonal
        for k in range(-2 * side // period - 2, 2 * side // period + 2):
            o = k * period + phase
            if orientation == 0:
                draw.rectangle([0, o, side, o + width - 1], fill=colour)
            elif orientation == 1:
                draw.rectangle([o, 0, o + width - 1, side], fill=colour)
            else:
                draw.polygon(
                    [(o, 0), (o + width, 0), (o + width - side, side), (o - side, side)], fill=colour
                )
    elif texture == "dots":
        radius = period * 0.22
        for y in range(phase - period, side + period, period):
            for x in range(phase - period, side + period, period):
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    elif texture == "checkered":
        for row, y in enumerate(range(phase - period, side + period, period)):
            for col, x in enumerate(range(phase - period, side + period, period)):
                if (row + col) % 2 == 0:
                    draw.rectangle([x, y, x + period - 1, y + period - 1], fill=colour)
    else:
        raise ValueError(f"unknown texture {texture!r}")


def _draw_object(draw: ImageDraw.ImageDraw, side: int, obj: SceneObject, rng: np.random.Generator) -> None:
    fill = _shade(COLOURS[obj.colour], rng)
    cx, cy, r = obj.cx * side, obj.cy * side, obj.radius * side
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        return
    if obj.shape == "ring":
        # A thick outline, so the background shows through the hole.
        draw.ellipse(
            [cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, round(r * (1 - RING_INNER)))
        )
        return
    angle = math.radians(float(rng.uniform(-ROTATION_JITTER, ROTATION_JITTER)))
    cos, sin = math.cos(angle), math.sin(angle)
    pts = [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in _POLYGONS[obj.shape]]
    draw.polygon(pts, fill=fill)


def render_scene(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """An RGB ``size`` x ``size`` picture of ``scene``; ``rng`` drives the nuisance variation only."""
    if size < 32:
        raise ValueError(f"image size must be at least 32 pixels, got {size}")
    side = size * SUPERSAMPLE
    bg = _shade(BACKGROUND_COLOURS[scene.background], rng)
    image = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(image)
    _draw_texture(draw, side, scene.texture, _pattern_colour(bg, rng), rng)
    for obj in scene.objects:
        _draw_object(draw, side, obj, rng)
    return image.resize((size, size), Image.Resampling.BOX)
