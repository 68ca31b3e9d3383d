"""Scenes of the generated data set: what is in a picture, and the geometry captions talk about.

A scene is 1-4 objects (shape, colour, size, position) on a background (colour, texture). All
coordinates are normalised to the unit square (x to the right, y downwards), so one scene can be
rendered at any size. Each object's drawn shape lies inside its circle (centre, radius), and
objects' circles never touch, so geometry computed from circles is true of the rendered pixels.

Positions come from a coarse 3x3 grid (one object per cell) with jitter, so every object has an
unambiguous named region (left/centre/right x top/middle/bottom). Relations between two objects
(left of, right of, above, below, next to) are derived from the circles, see :func:`relations`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "diamond")
# Saturated object colours, far apart in RGB and far from every (neutral) background colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (40, 160, 55),
    "cyan": (20, 195, 205),
    "blue": (35, 65, 215),
    "purple": (135, 45, 175),
    "pink": (245, 125, 195),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (242, 242, 242),
    "grey": (150, 150, 150),
    "black": (25, 25, 25),
    "beige": (222, 204, 165),
}
TEXTURES: tuple[str, ...] = ("plain", "stripes", "dots", "checkered")
SIZES: tuple[str, ...] = ("small", "large")
# Radius ranges as fractions of the image side: small circles span 22-25% of it, large 40-44%. The gap
# keeps the categories apart for every shape: a large square (side 1.41 r) is wider than any small shape.
RADIUS_RANGE: dict[str, tuple[float, float]] = {"small": (0.11, 0.125), "large": (0.2, 0.22)}
COLUMNS: tuple[str, ...] = ("left", "centre", "right")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below", "next_to")

MAX_OBJECTS = 4
MAX_LARGE = 2
CELL_JITTER = 0.06  # max offset from a grid cell's centre; keeps every centre >= 0.09 from a region border
BORDER = 0.01  # min distance between an object's circle and the image edge
MIN_GAP = 0.03  # min distance between two objects' circles
NEXT_TO_GAP = 0.10  # circles closer than this are "next to" each other
_PRECISION = 4  # coordinates are rounded, so scenes.json round-trips exactly


@dataclass(frozen=True)
class SceneObject:
    """One object: ``cx``, ``cy``, ``radius`` are fractions of the image side (y grows downwards)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float

    @property
    def column(self) -> str:
        return COLUMNS[min(int(self.cx * 3), 2)]

    @property
    def row(self) -> str:
        return ROWS[min(int(self.cy * 3), 2)]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounding box of the object's circle ``(x0, y0, x1, y1)``; the drawn shape lies inside it."""
        r = self.radius
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "centre": [self.cx, self.cy],
            "radius": self.radius,
            "bbox": [round(v, _PRECISION) for v in self.bbox],
            "region": [self.column, self.row],
        }


@dataclass(frozen=True)
class Scene:
    """Objects on a background. ``background`` is a colour name, ``texture`` one of :data:`TEXTURES`."""

    objects: tuple[SceneObject, ...]
    background: str
    texture: str

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1-{MAX_OBJECTS} objects, got {len(self.objects)}")
        if self.background not in BACKGROUND_COLOURS:
            raise ValueError(f"unknown background colour {self.background!r}")
        if self.texture not in TEXTURES:
            raise ValueError(f"unknown background texture {self.texture!r}")
        for obj in self.objects:
            if obj.shape not in SHAPES or obj.colour not in COLOURS or obj.size not in SIZES:
                raise ValueError(f"unknown shape, colour or size in {obj}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON metadata: objects, background and the relations captions may state."""
        return {
            "background": {"colour": self.background, "texture": self.texture},
            "objects": [obj.to_dict() for obj in self.objects],
            "relations": [[i, rel, j] for i, rel, j in relations(self)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        objects = tuple(
            SceneObject(
                shape=o["shape"],
                colour=o["colour"],
                size=o["size"],
                cx=float(o["centre"][0]),
                cy=float(o["centre"][1]),
                radius=float(o["radius"]),
            )
            for o in data["objects"]
        )
        background = data["background"]
        return cls(objects=objects, background=background["colour"], texture=background["texture"])


def relations(scene: Scene) -> list[tuple[int, str, int]]:
    """All ``(i, relation, j)`` facts between distinct objects, read "object i is <relation> object j".

    ``left_of``/``right_of``: the circles are separated horizontally (so are the drawn shapes) and
    the horizontal offset is at least the vertical one, so the phrase reads naturally;
    ``above``/``below`` likewise vertically. ``next_to``: the circles are less than
    :data:`NEXT_TO_GAP` apart.
    """
    facts: list[tuple[int, str, int]] = []
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            if i == j:
                continue
            dx, dy = b.cx - a.cx, b.cy - a.cy
            if abs(dx) >= abs(dy) and abs(dx) > a.radius + b.radius:
                facts.append((i, "left_of" if dx > 0 else "right_of", j))
            if abs(dy) >= abs(dx) and abs(dy) > a.radius + b.radius:
                facts.append((i, "above" if dy > 0 else "below", j))
            if math.hypot(dx, dy) - a.radius - b.radius < NEXT_TO_GAP:
                facts.append((i, "next_to", j))
    return facts


def _place(rng: np.random.Generator, radii: list[float]) -> list[tuple[float, float]] | None:
    """Centres for circles of ``radii`` in distinct grid cells, or None when this draw does not fit."""
    cells = rng.choice(9, size=len(radii), replace=False)
    centres: list[tuple[float, float]] = []
    for cell, r in zip(cells, radii):
        col, row = int(cell) % 3, int(cell) // 3
        x = (col + 0.5) / 3 + rng.uniform(-CELL_JITTER, CELL_JITTER)
        y = (row + 0.5) / 3 + rng.uniform(-CELL_JITTER, CELL_JITTER)
        x = min(max(x, r + BORDER), 1 - r - BORDER)
        y = min(max(y, r + BORDER), 1 - r - BORDER)
        for (px, py), pr in zip(centres, radii):
            if math.hypot(x - px, y - py) < r + pr + MIN_GAP:
                return None
        centres.append((x, y))
    return centres


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random scene: 1-4 objects (at most two large), non-overlapping, on a random background.

    Object attributes are drawn independently (two objects may share a colour or a shape), so
    many scenes share objects and matching must use the whole scene.
    """
    n = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.3, 0.3, 0.25]))
    while True:
        sizes = [SIZES[int(k)] for k in rng.integers(0, 2, size=n)]
        if sizes.count("large") > MAX_LARGE:
            continue
        radii = [round(float(rng.uniform(*RADIUS_RANGE[s])), _PRECISION) for s in sizes]
        for _ in range(20):
            centres = _place(rng, radii)
            if centres is not None:
                break
        else:
            continue
        shapes = rng.integers(0, len(SHAPES), size=n)
        colours = rng.integers(0, len(COLOURS), size=n)
        colour_names = list(COLOURS)
        objects = tuple(
            SceneObject(
                shape=SHAPES[int(shapes[k])],
                colour=colour_names[int(colours[k])],
                size=sizes[k],
                cx=round(centres[k][0], _PRECISION),
                cy=round(centres[k][1], _PRECISION),
                radius=radii[k],
            )
            for k in range(n)
        )
        background = list(BACKGROUND_COLOURS)[int(rng.integers(0, len(BACKGROUND_COLOURS)))]
        texture = TEXTURES[int(rng.integers(0, len(TEXTURES)))]
        return Scene(objects=objects, background=background, texture=texture)
