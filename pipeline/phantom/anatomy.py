"""Normal anatomy of a phantom film.

Every image carries body, lungs, heart, mediastinum and trachea, diaphragm
domes, clavicles, posterior/anterior ribs, spine, branching lung vessels,
breast shadows on women and scapulae on AP films, with per-patient variation
in size, position, rotation and exposure (`sample_patient_anatomy`) plus
per-film jitter and the structural findings that move organs
(`build_anatomy`). The draw_* functions paint it onto a `Film`.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from pipeline.phantom.geometry import (
    F32,
    Anatomy,
    Film,
    Lung,
    Pose,
    blob,
    dome_y,
    draw_tree,
    ellipse,
    ramp,
    stroke_canvas,
    strokes_to_layer,
)
from pipeline.phantom.plan import FilmRecord


def sample_patient_anatomy(rng: np.random.Generator, sex: str) -> dict:
    """The patient's own build: stays the same across follow-ups."""
    size = rng.uniform(0.93, 1.04) * (0.97 if sex == "F" else 1.0)
    spread = rng.uniform(0.165, 0.19)
    return dict(
        size=size, spread=spread,
        lung_ax=rng.uniform(0.135, 0.155), lung_ay=rng.uniform(0.39, 0.44),
        lung_cy=rng.uniform(0.54, 0.58), asym=rng.uniform(-0.01, 0.01),
        dome=rng.uniform(0.63, 0.68), dome_k=rng.uniform(1.8, 3.0),
        ctr=float(np.clip(rng.normal(0.42, 0.03), 0.34, 0.5)),
        heart_h=rng.uniform(0.11, 0.135),
        rib_top=rng.uniform(0.14, 0.17), rib_step=rng.uniform(0.048, 0.056),
        rib_bend=rng.uniform(0.09, 0.15), clavicle_y=rng.uniform(0.15, 0.2),
        tissue=rng.uniform(0.5, 0.58), lung_air=rng.uniform(0.25, 0.3),
        bone_gain=rng.uniform(0.8, 1.2), vessel_gain=rng.uniform(0.8, 1.2),
        angle=math.radians(rng.uniform(-3.0, 3.0)),
        dx=rng.uniform(-0.025, 0.025), dy=rng.uniform(-0.025, 0.025),
        contrast=rng.uniform(0.9, 1.12), offset=rng.uniform(-0.03, 0.04),
        gamma=rng.uniform(0.85, 1.15),
    )


def faded(normal: float, abnormal: float, fade: float) -> float:
    """`abnormal` moved back towards `normal` by `fade` (0: unchanged, exactly)."""
    if not fade:
        return abnormal
    return normal + (1.0 - fade) * (abnormal - normal)


def film_lungs(build: dict, rng: np.random.Generator, has: set[str], ap: bool,
               fade: float) -> tuple[list[Lung], float]:
    """Both lungs and the mediastinum's x for this film: the build, shaped by
    inspiration (AP), hyperinflation (Emphysema) and volume loss (Atelectasis,
    which draws from `rng`)."""
    ax, ay = build["lung_ax"], build["lung_ay"]
    dome, dome_k = build["dome"], build["dome_k"]
    if ap:  # supine bedside films: poorer inspiration
        dome -= 0.02
    if "Emphysema" in has:  # hyperinflation: big lungs, low flat diaphragm
        ax, ay = faded(ax, ax * 1.08, fade), faded(ay, ay * 1.08, fade)
        dome, dome_k = faded(dome, dome + 0.05, fade), faded(dome_k, dome_k * 0.3, fade)
    lungs = []
    for side in (0, 1):
        sign = -1.0 if side == 0 else 1.0
        cx = 0.5 + sign * (build["spread"] + (build["asym"] if side else -build["asym"]))
        # The right hemidiaphragm (film left) sits higher, under the liver.
        side_dome = dome - (0.02 if side == 0 else 0.0)
        lungs.append(Lung(cx, build["lung_cy"], ax * (1.0 if side == 0 else 0.97), ay,
                          side_dome, dome_k, cx - sign * 0.02, side))
    mid_x = 0.5
    if "Atelectasis" in has:  # volume loss: raise one dome, pull mediastinum over
        side = int(rng.integers(0, 2))
        raised = lungs[side].dome_y - rng.uniform(0.03, 0.05)
        lungs[side] = replace(lungs[side], dome_y=faded(lungs[side].dome_y, raised, fade))
        mid_x = faded(mid_x, mid_x + lungs[side].lateral * rng.uniform(0.008, 0.015), fade)
    return lungs, mid_x


def build_anatomy(build: dict, rng: np.random.Generator, record: FilmRecord, fade: float = 0.0) -> Anatomy:
    """Patient build + this film's positioning/exposure + structural findings.

    `fade` (render.py's subgroup fade) shrinks each structural finding's
    departure from the normal build by that fraction; it takes no draws of
    its own from `rng` (0, the default, changes nothing at all).
    """
    has = set(record.findings)
    ap = record.view == "AP"
    pose = Pose(
        dx=build["dx"] + rng.uniform(-0.01, 0.01), dy=build["dy"] + rng.uniform(-0.01, 0.01),
        scale=build["size"] * rng.uniform(0.98, 1.02),
        angle=build["angle"] + math.radians(rng.uniform(-1.0, 1.0)),
    )
    lungs, mid_x = film_lungs(build, rng, has, ap, fade)
    thorax = (lungs[1].cx + lungs[1].ax) - (lungs[0].cx - lungs[0].ax)
    ctr = build["ctr"]
    if "Cardiomegaly" in has:
        ctr = faded(ctr, rng.uniform(0.57, 0.66), fade)
    elif "Emphysema" in has:  # long narrow "tubular" heart
        ctr = faded(ctr, ctr * 0.85, fade)
    if ap:  # AP magnifies the anterior heart
        ctr *= 1.06
    heart_w = ctr * thorax / 2.0
    heart_h = build["heart_h"] * (1.05 if ap else 1.0)
    heart_base = max(lung.dome_y for lung in lungs) + 0.015
    return Anatomy(
        sex=record.sex, view=record.view, pose=pose,
        body_ax=0.46 * (0.96 if record.sex == "F" else 1.0), body_ay=0.58,
        lungs=(lungs[0], lungs[1]),
        heart_x=mid_x + 0.3 * heart_w, heart_y=heart_base - 0.55 * heart_h,
        heart_w=heart_w, heart_h=heart_h, mid_x=mid_x, med_w=0.045,
        hilum_y=build["lung_cy"] - 0.1,
        rib_top=build["rib_top"], rib_step=build["rib_step"], rib_bend=build["rib_bend"],
        clavicle_y=build["clavicle_y"] - (0.02 if ap else 0.0),
        tissue=build["tissue"], lung_air=build["lung_air"], heart_gain=0.17,
        bone_gain=build["bone_gain"] * rng.uniform(0.92, 1.08),
        vessel_gain=build["vessel_gain"] * (faded(1.0, 0.35, fade) if "Emphysema" in has else 1.0),
        contrast=build["contrast"] * rng.uniform(0.96, 1.04) * (0.92 if ap else 1.0),
        offset=build["offset"] + rng.uniform(-0.015, 0.015) + (0.03 if ap else 0.0),
        gamma=build["gamma"] * rng.uniform(0.97, 1.03),
        noise=rng.uniform(0.008, 0.016) * (1.25 if ap else 1.0),
    )


def draw_normal_anatomy(film: Film) -> np.ndarray:
    """Tissue density without the lungs' air; the bone and vessel layers fill in."""
    anatomy = film.anatomy
    tissue = draw_body(film)
    draw_lungs(film)
    tissue += film.heart * F32(anatomy.heart_gain)
    tissue += film.mediastinum * F32(0.1) - draw_trachea(film) * F32(0.12)
    tissue += draw_abdomen(film)
    if anatomy.sex == "F":
        tissue += draw_breasts(film)
    draw_spine(film)
    draw_clavicles(film)
    draw_ribs(film)
    if anatomy.view == "AP":
        draw_scapulae(film)
    draw_vessels(film)
    return tissue


def draw_body(film: Film) -> np.ndarray:
    anatomy = film.anatomy
    # A superellipse reads as a torso with shoulders rather than an egg.
    dx = np.abs(film.grid_x - F32(0.5)) * F32(1 / anatomy.body_ax)
    dy = np.abs(film.grid_y - F32(0.62)) * F32(1 / anatomy.body_ay)
    torso = ramp((F32(1) - np.cbrt(dx * dx * dx + dy * dy * dy)) * F32(anatomy.body_ax), 0.012)
    neck = ramp(F32(0.13) - np.abs(film.grid_x - F32(0.5)), 0.03) * ramp(F32(0.2) - film.grid_y, 0.05)
    film.body = np.maximum(torso, neck)
    return film.body * F32(anatomy.tissue)


def draw_lungs(film: Film) -> None:
    """Air-filled lungs: ellipses cut by the domes, mediastinum and heart."""
    film.mediastinum = draw_mediastinum_mask(film)
    film.heart = draw_heart_mask(film)
    outside = (F32(1.0) - film.mediastinum) * (F32(1.0) - F32(0.88) * film.heart)
    film.lung_side = []
    for lung in film.anatomy.lungs:
        shape = ellipse(film, lung.cx, lung.cy, lung.ax, lung.ay, edge=0.006)
        above_dome = ramp(dome_y(film, lung) - film.grid_y, 0.006)
        film.lung_side.append(shape * above_dome * outside)
    film.lungs = film.lung_side[0] + film.lung_side[1]


def draw_mediastinum_mask(film: Film) -> np.ndarray:
    """Central soft-tissue column; the aortic knob bulges to the film's right."""
    anatomy = film.anatomy
    knob = F32(0.022) * np.exp(F32(-0.5) * ((film.grid_y - F32(anatomy.hilum_y - 0.13)) * F32(1 / 0.035)) ** 2)
    dx = film.grid_x - F32(anatomy.mid_x)
    half = np.where(dx > 0, F32(anatomy.med_w) + knob, F32(anatomy.med_w))
    return ramp(half - np.abs(dx), 0.008) * ramp(F32(anatomy.heart_y) - film.grid_y, 0.05)


def draw_heart_mask(film: Film) -> np.ndarray:
    anatomy = film.anatomy
    heart = ellipse(film, anatomy.heart_x, anatomy.heart_y, anatomy.heart_w, anatomy.heart_h, edge=0.006)
    # The heart sits on the diaphragm and fades into the equally dense abdomen.
    floor = max(lung.dome_y for lung in anatomy.lungs) + 0.03
    return heart * ramp(F32(floor) - film.grid_y, 0.05)


def draw_abdomen(film: Film) -> np.ndarray:
    """Liver and bowel below the domes: nearly as dense as the heart."""
    anatomy = film.anatomy
    left, right = anatomy.lungs
    # Blend the two domes across the midline; a hard switch leaves a seam
    # whenever one dome is raised.
    right_share = ramp(film.grid_x - F32(anatomy.mid_x), 0.08)
    own = dome_y(film, left) * (F32(1) - right_share) + dome_y(film, right) * right_share
    # Under the heart the two domes meet; the cap only bites near the midline.
    centre = F32(0.5 * (left.dome_y + right.dome_y) + 0.03)
    cap = centre + F32(4) * np.maximum(np.abs(film.grid_x - F32(anatomy.mid_x)) - F32(0.08), F32(0))
    domes = np.minimum(own, cap)
    film.abdomen = ramp(film.grid_y - domes - F32(0.01), 0.03) * film.body
    return film.abdomen * F32(0.12)


def draw_trachea(film: Film) -> np.ndarray:
    anatomy = film.anatomy
    tube = ramp(F32(0.011) - np.abs(film.grid_x - F32(anatomy.mid_x)), 0.005)
    return tube * ramp(F32(anatomy.hilum_y - 0.07) - film.grid_y, 0.02)


def draw_spine(film: Film) -> None:
    column = ramp(F32(0.034) - np.abs(film.grid_x - F32(film.anatomy.mid_x)), 0.008)
    # Disc spaces: a faint periodic dip along the column.
    discs = F32(0.8) + F32(0.2) * np.cos(film.grid_y * F32(2 * math.pi / 0.043))
    film.bone += column * discs * F32(0.07)


def draw_clavicles(film: Film) -> None:
    anatomy = film.anatomy
    for sign in (-1.0, 1.0):
        reach = (film.grid_x - F32(anatomy.mid_x)) * F32(sign)
        along_t = np.clip((reach - F32(0.05)) * F32(1 / 0.27), F32(0), F32(1))
        centre = (F32(anatomy.clavicle_y + 0.035) - F32(0.06) * along_t
                  + F32(0.02) * np.sin(along_t * F32(math.pi)))
        along = ramp(reach - F32(0.05), 0.01) * ramp(F32(0.33) - reach, 0.03)
        film.bone += ramp(F32(0.011) - np.abs(film.grid_y - centre), 0.005) * along * F32(0.16)


def draw_ribs(film: Film) -> None:
    """Posterior ribs as bright arcs, fainter anterior ribs sloping the other way."""
    anatomy = film.anatomy
    n_ribs = 10
    for sign in (-1.0, 1.0):
        # 0 at the midline, 1 at about the chest wall.
        reach = np.maximum((film.grid_x - F32(anatomy.mid_x)) * F32(sign / 0.33), F32(0))
        # Dense heart and abdomen swamp the thin ribs behind them.
        hidden = F32(1) - F32(0.8) * film.heart - F32(0.9) * film.abdomen
        lateral = ramp(reach - F32(0.08), 0.03) * ramp(F32(1.12) - reach, 0.04)
        # Posterior: rise slightly from the spine, then curve down laterally.
        posterior = film.grid_y - (F32(-0.03) * reach + F32(anatomy.rib_bend) * reach * reach)
        film.bone += (rib_bands(posterior, anatomy.rib_top, anatomy.rib_step, n_ribs, 0.55)
                      * lateral * F32(0.1) * hidden)
        # Anterior: slope down towards the sternum, fade medially.
        anterior = film.grid_y - F32(0.12) * (F32(1) - reach) ** 2
        front = ramp(reach - F32(0.3), 0.2)
        film.bone += (rib_bands(anterior, anatomy.rib_top + 0.06, anatomy.rib_step * 0.9, 7, 0.45)
                      * lateral * front * F32(0.04))


def rib_bands(position: np.ndarray, top: float, step: float, count: int, duty: float) -> np.ndarray:
    """`count` bands along position, each `duty` of a period thick; spacing widens caudally."""
    phase = (position - F32(top)) * F32(1 / step)
    phase = np.maximum(phase, F32(0))
    phase *= F32(1) - F32(0.011) * phase  # ~phase**0.95, cheaper than pow
    frac = phase - np.floor(phase)
    band = np.sqrt(np.clip(np.sin(frac * F32(math.pi / duty)), F32(0), F32(1)))
    band *= frac < F32(duty)
    return band * ramp(F32(count) - phase, 0.5) * ramp(position - F32(top), 0.004)


def draw_vessels(film: Film) -> None:
    """Branching vascular trees from each hilum, thickest centrally."""
    anatomy = film.anatomy
    canvas = stroke_canvas(film)
    for lung in anatomy.lungs:
        hilum_x = anatomy.mid_x + lung.lateral * 0.085
        for degrees in (-65, -35, -5, 25, 55):
            angle = math.radians(degrees + film.rng.uniform(-10, 10))
            draw_tree(film, canvas, hilum_x, anatomy.hilum_y + 0.03, angle, lung.lateral,
                      length=0.085, width=0.007, depth=5)
    film.vessels = strokes_to_layer(canvas) * F32(0.09 * anatomy.vessel_gain)
    film.vessels += blob(film, anatomy.mid_x - 0.09, anatomy.hilum_y + 0.03, 0.03, 0.04) * F32(0.05)
    film.vessels += blob(film, anatomy.mid_x + 0.09, anatomy.hilum_y + 0.02, 0.03, 0.04) * F32(0.05)


def draw_breasts(film: Film) -> np.ndarray:
    shadow = np.zeros_like(film.grid_x)
    for lung in film.anatomy.lungs:
        shadow += ellipse(film, lung.cx + lung.lateral * 0.02, lung.dome_y + 0.02,
                          0.16, 0.11, edge=0.05) * ramp(film.grid_y - F32(lung.dome_y - 0.06), 0.04)
    return shadow * F32(0.06)


def draw_scapulae(film: Film) -> None:
    """AP films project the scapulae over the upper lateral lungs."""
    for lung in film.anatomy.lungs:
        film.bone += ellipse(film, lung.cx + lung.lateral * 0.13, lung.cy - 0.22, 0.06, 0.13,
                             edge=0.01, angle=lung.lateral * 0.25) * F32(0.05)
