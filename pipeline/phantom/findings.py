"""Findings planted on a phantom film.

Each plant_* adds to the film's layers and returns a map whose bright part
is the finding; its bounding box (above BOX_THRESHOLD of the map's peak)
becomes the NIH box. The films are cartoons, not radiology: each finding is
a salient local pattern (tens of grey levels, large enough to survive a
downsample to 320 px) so a small CNN trained from scratch can learn it.

=================== ==========================================================
Finding             Planted pattern (box = what BBox_List_2017.csv records)
=================== ==========================================================
Atelectasis         plate-like band or hilum-based wedge of opacity in a lower
                    zone; ipsilateral diaphragm raised, mediastinum pulled over
Cardiomegaly        heart shadow widened to a cardiothoracic ratio of
                    0.57-0.66 (normal ~0.42); box = heart
Consolidation       dense patchy round-ish opacity with dark branching air
                    bronchograms inside
Edema               bilateral perihilar "bat-wing" haze plus short horizontal
                    Kerley B lines at the lateral bases; box spans both sides
Effusion            homogeneous basal opacity that blunts the costophrenic
                    angle, upper edge a meniscus rising laterally
Emphysema           larger, hyperlucent lungs, flat low diaphragm, narrow heart,
                    sparse markings, a bulla or two; box = one lung
Fibrosis            reticular net of fine lines over haze, upper/peripheral
Hernia              round retrocardiac opacity just above the diaphragm with a
                    gas bubble and a flat air-fluid level
Infiltration        ill-defined hazy patchy opacity, softer than consolidation
Mass                large (radius 6-9% of the film) lobulated round opacity
Nodule              small (radius 2-3.5%) round opacity
Pleural_Thickening  smooth band of soft-tissue density along the lateral wall
Pneumonia           lobar opacity: a whole upper/middle/lower zone, mottled,
                    with one sharp straight fissure edge
Pneumothorax        lucent apical/lateral rim without vessels, ribs faded, a
                    thin bright visceral pleural line at the collapsed lung
=================== ==========================================================

The structural parts (raised dome, shifted mediastinum, big or narrow heart,
hyperinflation) are decided earlier, in anatomy.build_anatomy.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from pipeline.core.labels import FINDINGS
from pipeline.phantom.geometry import (
    F32,
    Film,
    Lung,
    blob,
    draw_tree,
    ellipse_radius,
    ramp,
    smooth_noise,
    stroke_canvas,
    strokes_to_layer,
)


def point_in_lung(film: Film, lung: Lung, r_max: float = 0.7, margin: float = 0.0,
                  y_range: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """A random point well inside `lung`, clear of heart, mediastinum and dome."""
    anatomy, rng = film.anatomy, film.rng
    for _ in range(500):
        theta, rho = rng.uniform(0, 2 * math.pi), r_max * math.sqrt(rng.uniform(0, 1))
        x = lung.cx + lung.ax * rho * math.cos(theta)
        y = lung.cy + lung.ay * rho * math.sin(theta)
        dome = lung.dome_y + lung.dome_k * (x - lung.dome_x) ** 2
        rel = (y - lung.cy + lung.ay) / (2 * lung.ay)
        in_heart = ((x - anatomy.heart_x) / (anatomy.heart_w + margin)) ** 2 \
            + ((y - anatomy.heart_y) / (anatomy.heart_h + margin)) ** 2 < 1.0
        medial = abs(x - anatomy.mid_x) < anatomy.med_w + 0.02 + margin
        if y < dome - 0.02 - margin and not in_heart and not medial \
                and y_range[0] <= rel <= y_range[1]:
            return x, y
    return lung.cx + lung.lateral * 0.3 * lung.ax, lung.cy - 0.2 * lung.ay


def pick_lung(film: Film) -> Lung:
    return film.anatomy.lungs[int(film.rng.integers(0, 2))]


def plant_nodule(film: Film) -> np.ndarray:
    radius = film.rng.uniform(0.02, 0.035) / film.anatomy.pose.scale
    x, y = point_in_lung(film, pick_lung(film), r_max=0.7, margin=radius)
    dist2 = ((film.grid_x - F32(x)) ** 2 + (film.grid_y - F32(y)) ** 2) * F32(1 / radius**2)
    mask = np.sqrt(np.clip(F32(1) - dist2, F32(0), F32(1))) ** F32(0.6)
    film.opacity += mask * F32(film.rng.uniform(0.2, 0.32))
    return mask


def plant_mass(film: Film) -> np.ndarray:
    rng = film.rng
    radius = rng.uniform(0.06, 0.09) / film.anatomy.pose.scale
    x, y = point_in_lung(film, pick_lung(film), r_max=0.55, margin=0.3 * radius)
    theta = np.arctan2(film.grid_y - F32(y), film.grid_x - F32(x))
    lobes = F32(1)
    for harmonic in (3, 5, 7):  # lobulated outline
        lobes = lobes + F32(rng.uniform(0.04, 0.09)) * np.sin(F32(harmonic) * theta + F32(rng.uniform(0, 6.3)))
    dist2 = ((film.grid_x - F32(x)) ** 2 + (film.grid_y - F32(y)) ** 2) / (F32(radius) * lobes) ** 2
    mask = np.clip(F32(1) - dist2, F32(0), F32(1)) ** F32(0.35)
    film.opacity += mask * F32(rng.uniform(0.24, 0.34))
    film.vessel_keep *= F32(1) - F32(0.8) * mask  # solid tissue hides the vessels
    return mask


def plant_effusion(film: Film) -> np.ndarray:
    """Fluid fills the base up to a meniscus that climbs the lateral wall."""
    rng, lung = film.rng, pick_lung(film)
    side = film.lung_side[lung.side]
    lateral_dome = lung.dome_y + lung.dome_k * (lung.ax + 0.02) ** 2
    level = lateral_dome - rng.uniform(0.13, 0.22)
    lateral = np.clip((film.grid_x - F32(lung.cx)) * F32(lung.lateral / lung.ax), F32(0), F32(1))
    surface = F32(level) - F32(rng.uniform(0.05, 0.09)) * lateral * lateral
    mask = side * ramp(film.grid_y - surface, 0.012)
    # A little denser than the chest wall so the fluid reads as its own shadow.
    film.opacity += mask * F32(film.anatomy.lung_air * rng.uniform(0.95, 1.05) + 0.07)
    film.vessel_keep *= F32(1) - mask
    return mask


def plant_pneumothorax(film: Film) -> np.ndarray:
    """Air between chest wall and a collapsed lung: lucent, no markings."""
    rng, lung = film.rng, pick_lung(film)
    gap = rng.uniform(0.035, 0.07)
    cx = lung.cx - lung.lateral * 0.6 * gap
    collapsed_r = ellipse_radius(film, cx, lung.cy + 1.3 * gap, lung.ax - 0.6 * gap, lung.ay - 0.5 * gap)
    inner = ramp((F32(1) - collapsed_r) * F32(lung.ax), 0.004)
    rim = film.lung_side[lung.side] * (F32(1) - inner)
    pleura = ramp(F32(0.0025) - np.abs(F32(1) - collapsed_r) * F32(lung.ax), 0.002)
    pleura *= ramp(film.lung_side[lung.side] - F32(0.5), 0.3)
    film.vessel_keep *= F32(1) - rim
    film.bone_keep *= F32(1) - F32(0.6) * rim
    film.lucency += rim * F32(rng.uniform(0.1, 0.15))
    film.opacity += pleura * F32(0.14) + inner * film.lung_side[lung.side] * F32(0.03)
    return rim


def plant_cardiomegaly(film: Film) -> np.ndarray:
    # The heart itself was widened in build_anatomy; the box is the heart.
    return film.heart


def plant_emphysema(film: Film) -> np.ndarray:
    rng = film.rng
    film.lucency += film.lungs * F32(rng.uniform(0.07, 0.1))
    for _ in range(int(rng.integers(1, 3))):  # bullae: lucent, thin-walled
        lung = pick_lung(film)
        x, y = point_in_lung(film, lung, r_max=0.7, y_range=(0.0, 0.45))
        radius = rng.uniform(0.025, 0.045)
        bulla_r = ellipse_radius(film, x, y, radius, radius)
        inside = ramp(F32(1) - bulla_r, 0.1)
        film.lucency += inside * film.lungs * F32(0.06)
        film.vessel_keep *= F32(1) - inside
        film.opacity += ramp(F32(0.12) - np.abs(F32(1) - bulla_r), 0.08) * film.lungs * F32(0.06)
    return film.lung_side[pick_lung(film).side]


def plant_atelectasis(film: Film) -> np.ndarray:
    rng = film.rng
    lung = pick_lung(film)
    if rng.random() < 0.6:  # plate-like (discoid) band at a base
        x, y = point_in_lung(film, lung, r_max=0.55, y_range=(0.5, 0.85))
        length, thick = rng.uniform(0.12, 0.2), rng.uniform(0.022, 0.035)
        mask = band(film, x, y, length, thick, math.radians(rng.uniform(-20, 20)))
    else:  # segmental wedge: apex at the hilum, base on the lateral pleura
        mask = wedge(film, lung)
    mask = mask * ramp(film.lung_side[lung.side] * F32(1.5), 0.5)
    film.opacity += mask * F32(rng.uniform(0.22, 0.3))
    film.vessel_keep *= F32(1) - F32(0.7) * mask
    return mask


def band(film: Film, x, y, length, thick, angle) -> np.ndarray:
    cos, sin = F32(math.cos(angle)), F32(math.sin(angle))
    dx, dy = film.grid_x - F32(x), film.grid_y - F32(y)
    along, across = cos * dx + sin * dy, -sin * dx + cos * dy
    return ramp(F32(length / 2) - np.abs(along), 0.02) * ramp(F32(thick / 2) - np.abs(across), 0.006)


def wedge(film: Film, lung: Lung) -> np.ndarray:
    rng = film.rng
    hilum_x, hilum_y = film.anatomy.mid_x + lung.lateral * 0.09, film.anatomy.hilum_y + 0.05
    base_y = rng.uniform(0.5, 0.62)
    outer = lung.cx + lung.lateral * lung.ax * 1.05
    lo, hi = base_y - rng.uniform(0.05, 0.08), base_y + rng.uniform(0.05, 0.08)
    canvas = stroke_canvas(film)
    corners = np.array([film.to_px(hilum_x, hilum_y), film.to_px(outer, lo), film.to_px(outer, hi)], np.int32)
    cv2.fillPoly(canvas, [corners], 255, cv2.LINE_AA, 4)
    return strokes_to_layer(canvas, sigma_px=film.res / 256)


def patchy(film: Film, x, y, rho, n_blobs) -> np.ndarray:
    """Union of a few Gaussian puffs around (x, y), softly thresholded."""
    rng, union = film.rng, np.zeros_like(film.grid_x)
    for _ in range(n_blobs):
        blob_x, blob_y = x + rng.normal(0, 0.45 * rho), y + rng.normal(0, 0.45 * rho)
        sigma = rng.uniform(0.3, 0.55) * rho
        union = np.maximum(union, blob(film, blob_x, blob_y, sigma, sigma * rng.uniform(0.8, 1.25)))
    return np.clip((union - F32(0.3)) * F32(1 / 0.35), F32(0), F32(1))


def plant_consolidation(film: Film) -> np.ndarray:
    rng, lung = film.rng, pick_lung(film)
    rho = rng.uniform(0.05, 0.08)
    x, y = point_in_lung(film, lung, r_max=0.6, margin=0.3 * rho)
    mask = patchy(film, x, y, rho, int(rng.integers(4, 8))) * ramp(film.lung_side[lung.side] * F32(1.3), 0.6)
    canvas = stroke_canvas(film)  # air bronchograms: dark branching tubes
    for _ in range(2):
        draw_tree(film, canvas, x - lung.lateral * 0.5 * rho, y + rng.uniform(-0.5, 0.5) * rho,
                  math.radians(rng.uniform(-40, 40)), lung.lateral,
                  length=0.5 * rho, width=0.006, depth=3)
    bronchi = strokes_to_layer(canvas, 0.6)
    amp = rng.uniform(0.26, 0.34)
    film.opacity += mask * F32(amp) * (F32(1) - F32(0.6) * bronchi)
    film.vessel_keep *= F32(1) - mask
    return mask


def plant_infiltration(film: Film) -> np.ndarray:
    rng, lung = film.rng, pick_lung(film)
    rho = rng.uniform(0.08, 0.13)
    x, y = point_in_lung(film, lung, r_max=0.6)
    haze = blob(film, x, y, rho / 1.8, rho / 1.5) * smooth_noise(film, 11, 0.3, 1.0)
    mask = np.clip(haze * F32(1.6), F32(0), F32(1)) * ramp(film.lung_side[lung.side] * F32(1.3), 0.6)
    film.opacity += mask * F32(rng.uniform(0.18, 0.25))
    return mask


def plant_pneumonia(film: Film) -> np.ndarray:
    """Lobar: a whole zone goes white, bounded by one straight sharp fissure."""
    rng = film.rng
    lung = pick_lung(film)
    zones = ("upper", "lower", "middle") if lung.side == 0 else ("upper", "lower")
    zone = zones[int(rng.integers(0, len(zones)))]
    tilt = F32(rng.uniform(-0.12, 0.12))
    fissure = F32(film.anatomy.hilum_y + rng.uniform(-0.02, 0.04)) + tilt * (film.grid_x - F32(lung.cx))
    if zone == "upper":
        region = ramp(fissure - film.grid_y, 0.005)
    elif zone == "lower":
        region = ramp(film.grid_y - fissure - F32(0.04), 0.05)
    else:  # right middle lobe: sharp above, fades below, hugs the heart border
        region = ramp(film.grid_y - fissure, 0.005) * ramp(fissure + F32(0.14) - film.grid_y, 0.05)
        region *= ramp((F32(lung.cx) - film.grid_x) * F32(lung.lateral) + F32(0.4 * lung.ax), 0.08)
    mottle = smooth_noise(film, 24, 0.7, 1.0)
    mask = region * film.lung_side[lung.side] * mottle
    film.opacity += mask * F32(rng.uniform(0.28, 0.36))
    film.vessel_keep *= F32(1) - F32(0.8) * mask
    return mask


def plant_edema(film: Film) -> np.ndarray:
    """Bilateral perihilar bat-wing haze plus Kerley B lines at both bases."""
    rng, anatomy = film.rng, film.anatomy
    wings = np.zeros_like(film.grid_x)
    for lung in anatomy.lungs:
        wings += blob(film, anatomy.mid_x + lung.lateral * 0.12, anatomy.hilum_y + 0.03,
                      rng.uniform(0.07, 0.09), rng.uniform(0.09, 0.12))
    wings = np.clip(wings, F32(0), F32(1)) * np.clip(film.lungs * F32(1.3), F32(0), F32(1))
    canvas = stroke_canvas(film)
    for lung in anatomy.lungs:
        draw_kerley_lines(film, canvas, lung)
    kerley = strokes_to_layer(canvas, 0.6) * np.clip(film.lungs * F32(2), F32(0), F32(1))
    film.opacity += wings * F32(rng.uniform(0.15, 0.22)) + kerley * F32(0.25)
    return np.maximum(wings, kerley)


def draw_kerley_lines(film: Film, canvas, lung: Lung) -> None:
    """Short horizontal septal lines reaching the lateral pleura near the base."""
    rng = film.rng
    edge_dome = lung.dome_y + lung.dome_k * (lung.ax * 0.9) ** 2
    for _ in range(int(rng.integers(5, 10))):
        y = edge_dome - rng.uniform(0.03, 0.14)
        dy = (y - lung.cy) / lung.ay
        x_edge = lung.cx + lung.lateral * lung.ax * math.sqrt(max(0.0, 1 - dy * dy)) * 0.98
        x_in = x_edge - lung.lateral * rng.uniform(0.03, 0.055)
        cv2.line(canvas, film.to_px(x_in, y), film.to_px(x_edge, y), 255, film.px(0.004), cv2.LINE_AA, 4)


def plant_fibrosis(film: Film) -> np.ndarray:
    """Reticular net of fine lines over a mild haze, upper and peripheral."""
    rng, lung = film.rng, pick_lung(film)
    rho = rng.uniform(0.07, 0.1)
    x = lung.cx + lung.lateral * lung.ax * rng.uniform(0.25, 0.5)
    y = lung.cy - lung.ay * rng.uniform(0.35, 0.55)
    region = blob(film, x, y, rho * 0.7, rho * 0.8)
    region = np.clip((region - F32(0.15)) * F32(1.6), F32(0), F32(1)) * film.lung_side[lung.side]
    canvas = stroke_canvas(film)
    draw_net(film, canvas, x, y, rho, rng.uniform(0.018, 0.026))
    net = strokes_to_layer(canvas, 0.6)
    mask = region * (F32(0.3) + net)
    film.opacity += region * F32(0.07) + region * net * F32(rng.uniform(0.24, 0.32))
    return mask


def draw_net(film: Film, canvas, x, y, rho, step) -> None:
    rng = film.rng
    n_nodes = int(2 * rho / step) + 2
    jitter = rng.uniform(-0.3, 0.3, (n_nodes, n_nodes, 2)) * step
    nodes = [[(x - rho + col * step + jitter[col, row, 0], y - rho + row * step + jitter[col, row, 1])
              for row in range(n_nodes)] for col in range(n_nodes)]
    width = film.px(0.0045)
    for col in range(n_nodes):
        for row in range(n_nodes):
            for d_col, d_row in ((1, 0), (0, 1)):
                if col + d_col < n_nodes and row + d_row < n_nodes and rng.random() < 0.85:
                    cv2.line(canvas, film.to_px(*nodes[col][row]), film.to_px(*nodes[col + d_col][row + d_row]),
                             255, width, cv2.LINE_AA, 4)


def plant_pleural_thickening(film: Film) -> np.ndarray:
    """Smooth soft-tissue band hugging the lateral chest wall over a stretch."""
    rng, lung = film.rng, pick_lung(film)
    lung_r = ellipse_radius(film, lung.cx, lung.cy, lung.ax, lung.ay)
    thick = F32(rng.uniform(0.016, 0.03)) * (F32(1) + F32(0.25) * np.sin(film.grid_y * F32(rng.uniform(30, 60))))
    depth = (F32(1) - lung_r) * F32(lung.ax)
    top = lung.cy - lung.ay * rng.uniform(0.2, 0.6)
    bottom = top + rng.uniform(0.12, 0.22)
    lateral = ramp((film.grid_x - F32(lung.cx)) * F32(lung.lateral) - F32(0.35 * lung.ax), 0.02)
    mask = (ramp(thick - depth, 0.006) * lateral * ramp(film.grid_y - F32(top), 0.02)
            * ramp(F32(bottom) - film.grid_y, 0.02))
    mask *= ramp(film.lung_side[lung.side] - F32(0.2), 0.3)
    film.opacity += mask * F32(film.anatomy.lung_air * rng.uniform(0.9, 1.05) + 0.04)
    film.vessel_keep *= F32(1) - mask
    return mask


def plant_hernia(film: Film) -> np.ndarray:
    """Hiatal hernia: round retrocardiac opacity with a gas bubble and level."""
    rng, anatomy = film.rng, film.anatomy
    radius = rng.uniform(0.045, 0.065)
    x = anatomy.mid_x + rng.uniform(-0.01, 0.04)
    y = min(lung.dome_y for lung in anatomy.lungs) - radius * rng.uniform(0.3, 0.7)
    sac_r = ellipse_radius(film, x, y, radius * 1.15, radius)
    sac = ramp((F32(1) - sac_r) * F32(radius), 0.004)
    level = y + radius * rng.uniform(-0.2, 0.2)
    gas = ramp((F32(0.8) - sac_r) * F32(radius), 0.004) * ramp(F32(level) - film.grid_y, 0.003)
    wall = ramp(F32(0.12) - np.abs(F32(1) - sac_r), 0.06)
    film.opacity += sac * F32(0.1) + wall * F32(0.08) - gas * F32(rng.uniform(0.3, 0.4))
    return sac


PLANTERS = {
    "Atelectasis": plant_atelectasis, "Cardiomegaly": plant_cardiomegaly,
    "Consolidation": plant_consolidation, "Edema": plant_edema,
    "Effusion": plant_effusion, "Emphysema": plant_emphysema,
    "Fibrosis": plant_fibrosis, "Hernia": plant_hernia,
    "Infiltration": plant_infiltration, "Mass": plant_mass, "Nodule": plant_nodule,
    "Pleural_Thickening": plant_pleural_thickening, "Pneumonia": plant_pneumonia,
    "Pneumothorax": plant_pneumothorax,
}
assert tuple(PLANTERS) == FINDINGS
# Which fraction of a finding map's peak still counts as "the finding" for
# its box: low for soft-edged hazes so the box encloses the visible change.
BOX_THRESHOLD = {finding: 0.1 for finding in FINDINGS} | {"Cardiomegaly": 0.5, "Emphysema": 0.5,
                                                          "Pneumothorax": 0.3}
