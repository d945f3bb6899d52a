"""Geometry of a phantom film: the anatomy's shape and the canvas it is drawn on.

Anatomy lives in "anatomical" unit coordinates; a pose maps it onto the film
so that rotation, shift and scale move everything, boxes included. A `Film`
holds the anatomical (x, y) of every pixel plus the density layers that the
anatomy and the findings add to; the helpers below turn shapes into soft
0..1 masks on those grids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

F32 = np.float32


@dataclass(frozen=True)
class Pose:
    dx: float
    dy: float
    scale: float
    angle: float  # radians

    def to_film(self, x: float, y: float) -> tuple[float, float]:
        ux, uy = (x - 0.5) * self.scale, (y - 0.5) * self.scale
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return 0.5 + self.dx + cos * ux - sin * uy, 0.5 + self.dy + sin * ux + cos * uy


@dataclass(frozen=True)
class Lung:
    cx: float
    cy: float
    ax: float
    ay: float
    dome_y: float  # height of the diaphragm dome's top
    dome_k: float  # dome curvature; small = flat
    dome_x: float
    side: int  # 0 = film left (patient right), 1 = film right

    @property
    def lateral(self) -> float:
        """+1 where x grows away from the midline on this side."""
        return -1.0 if self.side == 0 else 1.0


@dataclass(frozen=True)
class Anatomy:
    sex: str
    view: str
    pose: Pose
    body_ax: float
    body_ay: float
    lungs: tuple[Lung, Lung]
    heart_x: float
    heart_y: float
    heart_w: float  # half-width
    heart_h: float
    mid_x: float  # mediastinum / trachea centre
    med_w: float
    hilum_y: float
    rib_top: float
    rib_step: float
    rib_bend: float
    clavicle_y: float
    tissue: float
    lung_air: float
    heart_gain: float
    bone_gain: float
    vessel_gain: float
    contrast: float
    offset: float
    gamma: float
    noise: float

    @property
    def thorax_width(self) -> float:
        left, right = self.lungs
        return (right.cx + right.ax) - (left.cx - left.ax)


class Film:
    """Working canvas at `res` px. Layers are in density units (0 = black).

    grid_x, grid_y: the anatomical coordinates of every pixel centre.
    """

    def __init__(self, anatomy: Anatomy, res: int, rng: np.random.Generator):
        self.anatomy, self.res, self.rng = anatomy, res, rng
        self.grid_x, self.grid_y = anatomical_grid(anatomy.pose, res)
        self.edge = 1.5 / res  # soft edges ~1.5 px keep shapes alias-free
        self.bone = np.zeros((res, res), F32)
        self.vessels = np.zeros((res, res), F32)
        self.opacity = np.zeros((res, res), F32)
        self.lucency = np.zeros((res, res), F32)
        self.vessel_keep = np.ones((res, res), F32)  # 0 where markings vanish
        self.bone_keep = np.ones((res, res), F32)
        self.body = self.heart = self.mediastinum = self.abdomen = None
        self.lungs = self.lung_side = None

    def to_px(self, x: float, y: float) -> tuple[int, int]:
        """Anatomical point -> cv2 fixed-point (shift=4) pixel coordinates."""
        film_x, film_y = self.anatomy.pose.to_film(x, y)
        return int(round((film_x * self.res - 0.5) * 16)), int(round((film_y * self.res - 0.5) * 16))

    def px(self, length: float) -> int:
        """A length in anatomical units as a whole number of pixels (>= 1)."""
        return max(1, int(round(length * self.anatomy.pose.scale * self.res)))


def anatomical_grid(pose: Pose, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical (x, y) of every film pixel centre: the inverse pose."""
    centres = ((np.arange(res, dtype=F32) + F32(0.5)) / F32(res)) - F32(0.5)
    film_x, film_y = centres[None, :] - F32(pose.dx), centres[:, None] - F32(pose.dy)
    cos, sin = math.cos(pose.angle) / pose.scale, math.sin(pose.angle) / pose.scale
    grid_x = F32(0.5) + F32(cos) * film_x + F32(sin) * film_y
    grid_y = F32(0.5) - F32(sin) * film_x + F32(cos) * film_y
    return grid_x.astype(F32), grid_y.astype(F32)


def ramp(signed, edge: float) -> np.ndarray:
    """0 -> 1 across a band of `edge` centred on signed == 0."""
    scaled = signed * F32(1.0 / edge)
    scaled += F32(0.5)
    return np.clip(scaled, F32(0.0), F32(1.0), out=scaled)


def ellipse_radius(film: Film, cx, cy, ax, ay, angle: float = 0.0) -> np.ndarray:
    """Normalised elliptical radius (1 on the outline)."""
    dx, dy = film.grid_x - F32(cx), film.grid_y - F32(cy)
    if angle:
        cos, sin = F32(math.cos(angle)), F32(math.sin(angle))
        dx, dy = cos * dx + sin * dy, -sin * dx + cos * dy
    return np.sqrt((dx * F32(1.0 / ax)) ** 2 + (dy * F32(1.0 / ay)) ** 2)


def ellipse(film: Film, cx, cy, ax, ay, edge=None, angle: float = 0.0) -> np.ndarray:
    radius = ellipse_radius(film, cx, cy, ax, ay, angle)
    return ramp((F32(1.0) - radius) * F32(min(ax, ay)), edge or film.edge)


def blob(film: Film, cx, cy, sx, sy) -> np.ndarray:
    return np.exp(F32(-0.5) * (((film.grid_x - F32(cx)) * F32(1 / sx)) ** 2
                               + ((film.grid_y - F32(cy)) * F32(1 / sy)) ** 2))


def smooth_noise(film: Film, cells: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Band-limited random field: a few random cells, bicubically upsampled."""
    coarse = film.rng.uniform(lo, hi, (cells, cells)).astype(F32)
    return cv2.resize(coarse, (film.res, film.res), interpolation=cv2.INTER_CUBIC)


def stroke_canvas(film: Film) -> np.ndarray:
    return np.zeros((film.res, film.res), np.uint8)


def strokes_to_layer(canvas: np.ndarray, sigma_px: float = 0.7) -> np.ndarray:
    """Anti-aliased 8-bit line drawing -> softened 0..1 float layer."""
    layer = canvas.astype(F32) * F32(1 / 255)
    return cv2.GaussianBlur(layer, (0, 0), sigma_px)


def dome_y(film: Film, lung: Lung) -> np.ndarray:
    return F32(lung.dome_y) + F32(lung.dome_k) * (film.grid_x - F32(lung.dome_x)) ** 2


def draw_tree(film: Film, canvas, x, y, angle, lateral, length, width, depth, value=255):
    """Recursive bifurcating polyline; angle 0 points laterally, +down."""
    rng = film.rng
    stack = [(x, y, angle, length, width, depth)]
    while stack:
        x, y, angle, length, width, depth = stack.pop()
        end_x = x + lateral * length * math.cos(angle)
        end_y = y + length * math.sin(angle)
        cv2.line(canvas, film.to_px(x, y), film.to_px(end_x, end_y), value, film.px(width), cv2.LINE_AA, 4)
        if depth > 1:
            for turn in (-1.0, 1.0):
                child = angle + turn * math.radians(rng.uniform(14, 34))
                stack.append((end_x, end_y, child, length * rng.uniform(0.62, 0.8), width * 0.72, depth - 1))
