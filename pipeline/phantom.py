"""A synthetic chest radiograph phantom written in NIH ChestX-ray14's on-disk format.

`generate_phantom` writes ``images/<patient>_<follow-up>.png`` (8-bit grey,
PA or AP), ``Data_Entry_2017.csv`` and ``BBox_List_2017.csv`` exactly as NIH
lays them out, so every later stage can be exercised without the real 45 GB
release. The films are cartoons, not radiology: each finding is planted as a
salient local pattern (tens of grey levels, large enough to survive a
downsample to 320 px) so a small CNN trained from scratch can learn it.

Every image carries normal anatomy (body, lungs, heart, mediastinum and
trachea, diaphragm domes, clavicles, posterior/anterior ribs, spine, branching
lung vessels, breast shadows on women, scapulae on AP films) with per-patient
variation in size, position, rotation and exposure, plus per-film jitter.

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

Determinism: the label plan comes from ``SeedSequence(seed, spawn_key=(0,))``;
a patient's anatomy from ``spawn_key=(2, patient_id)``; a film's jitter,
findings placement and noise from ``spawn_key=(1, image_index)``. No global
RNG state is used, so the bytes do not depend on ``workers``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import atomic_dir
from pipeline.labels import FINDINGS, format_finding_labels
from pipeline.parallel import ordered_map
from pipeline.progress import Progress

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

# Share of NIH ChestX-ray14 images carrying each finding (release notes).
# Only the ordering and rough ratios matter here.
NIH_PREVALENCE: dict[str, float] = {
    "Infiltration": 0.177, "Effusion": 0.119, "Atelectasis": 0.103,
    "Nodule": 0.056, "Mass": 0.052, "Pneumothorax": 0.047,
    "Consolidation": 0.042, "Pleural_Thickening": 0.030, "Cardiomegaly": 0.025,
    "Emphysema": 0.022, "Edema": 0.021, "Fibrosis": 0.015,
    "Pneumonia": 0.013, "Hernia": 0.002,
}
NO_FINDING_RATE = 0.40
# A floor keeps even Hernia common enough that a test split of a few hundred
# images has positives for every finding, which AUC needs.
PREVALENCE_FLOOR = 0.06
MEAN_FINDINGS_PER_ABNORMAL = 2.0
IMAGES_PER_PATIENT_P = (0.35, 0.25, 0.18, 0.12, 0.10)  # 1..5 films
PERSIST_P = 0.5  # chance a follow-up repeats the previous film's findings
AP_P_NORMAL, AP_P_ABNORMAL = 0.33, 0.45  # sicker patients get bedside films
NIH_PIXEL_SPACING_1024 = 0.143
# Smooth anatomy is rendered at most at this size, then upsampled; only the
# noise is drawn at full resolution. Keeps a 1024 px film well under 80 ms.
WORK_RES_MAX = 512
F32 = np.float32


# --------------------------------------------------------------------------
# Label plan
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class FilmRecord:
    """One row of Data_Entry_2017.csv, before rendering."""
    index: int
    patient_id: int
    follow_up: int
    age: int
    sex: str
    view: str
    findings: tuple[str, ...]

    @property
    def image_id(self) -> str:
        return f"{self.patient_id:08d}_{self.follow_up:03d}.png"


def target_prevalence() -> dict[str, float]:
    """Per-finding share of all images: the floor plus NIH-proportional rest."""
    budget = (1.0 - NO_FINDING_RATE) * MEAN_FINDINGS_PER_ABNORMAL
    spare = budget - PREVALENCE_FLOOR * len(FINDINGS)
    total = sum(NIH_PREVALENCE.values())
    return {f: PREVALENCE_FLOOR + spare * NIH_PREVALENCE[f] / total for f in FINDINGS}


def _abnormal_inclusion_p() -> np.ndarray:
    """Bernoulli rates that, after rejecting empty draws, hit target_prevalence.

    Conditioning on "at least one finding" inflates each rate by
    1/P(non-empty); solve for the scale that undoes it.
    """
    p = np.array([target_prevalence()[f] for f in FINDINGS]) / (1.0 - NO_FINDING_RATE)
    lam = 1.0
    for _ in range(200):
        lam = 1.0 - float(np.prod(1.0 - np.clip(lam * p, 0.0, 1.0)))
    return np.clip(lam * p, 0.0, 1.0)


_INCLUSION_P = _abnormal_inclusion_p()


def sample_findings(rng: np.random.Generator) -> tuple[str, ...]:
    if rng.random() < NO_FINDING_RATE:
        return ()
    while True:
        hit = rng.random(len(FINDINGS)) < _INCLUSION_P
        if hit.any():
            return tuple(f for f, h in zip(FINDINGS, hit) if h)


def sample_base_age(rng: np.random.Generator) -> int:
    # NIH: mean ~47, sd ~17, a thin paediatric tail.
    if rng.random() < 0.03:
        return int(rng.integers(1, 18))
    return int(np.clip(round(rng.normal(47.5, 16.5)), 1, 95))


def plan_films(n_images: int, seed: int) -> list[FilmRecord]:
    """Assign patients, follow-ups, demographics, views and findings."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    films: list[FilmRecord] = []
    patient_id = 0
    while len(films) < n_images:
        patient_id += 1
        n_films = min(1 + int(rng.choice(5, p=IMAGES_PER_PATIENT_P)), n_images - len(films))
        sex = "M" if rng.random() < 0.56 else "F"
        age = sample_base_age(rng)
        findings: tuple[str, ...] = ()
        for follow_up in range(n_films):
            if follow_up == 0 or rng.random() >= PERSIST_P:
                findings = sample_findings(rng)
            if follow_up:
                age = min(95, age + int(rng.integers(0, 2)))
            ap_p = AP_P_ABNORMAL if findings else AP_P_NORMAL
            view = "AP" if rng.random() < ap_p else "PA"
            films.append(FilmRecord(len(films), patient_id, follow_up, age, sex, view, findings))
    return films


# --------------------------------------------------------------------------
# Geometry: anatomy lives in "anatomical" unit coordinates; a pose maps it
# onto the film so rotation/shift/scale move everything, boxes included.
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Pose:
    dx: float
    dy: float
    scale: float
    angle: float  # radians

    def to_film(self, x: float, y: float) -> tuple[float, float]:
        ux, uy = (x - 0.5) * self.scale, (y - 0.5) * self.scale
        c, s = math.cos(self.angle), math.sin(self.angle)
        return 0.5 + self.dx + c * ux - s * uy, 0.5 + self.dy + s * ux + c * uy


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


def build_anatomy(p: dict, rng: np.random.Generator, film: FilmRecord) -> Anatomy:
    """Patient build + this film's positioning/exposure + structural findings."""
    has = set(film.findings)
    ap = film.view == "AP"
    pose = Pose(
        dx=p["dx"] + rng.uniform(-0.01, 0.01), dy=p["dy"] + rng.uniform(-0.01, 0.01),
        scale=p["size"] * rng.uniform(0.98, 1.02),
        angle=p["angle"] + math.radians(rng.uniform(-1.0, 1.0)),
    )
    ax, ay = p["lung_ax"], p["lung_ay"]
    dome, dome_k, lung_air = p["dome"], p["dome_k"], p["lung_air"]
    if ap:  # supine bedside films: poorer inspiration
        dome -= 0.02
    if "Emphysema" in has:  # hyperinflation: big lungs, low flat diaphragm
        ax, ay, dome, dome_k = ax * 1.08, ay * 1.08, dome + 0.05, dome_k * 0.3
    lungs = []
    for side in (0, 1):
        sign = -1.0 if side == 0 else 1.0
        cx = 0.5 + sign * (p["spread"] + (p["asym"] if side else -p["asym"]))
        # The right hemidiaphragm (film left) sits higher, under the liver.
        d = dome - (0.02 if side == 0 else 0.0)
        lungs.append(Lung(cx, p["lung_cy"], ax * (1.0 if side == 0 else 0.97), ay,
                          d, dome_k, cx - sign * 0.02, side))
    mid_x = 0.5
    if "Atelectasis" in has:  # volume loss: raise one dome, pull mediastinum over
        side = int(rng.integers(0, 2))
        lungs[side] = replace(lungs[side], dome_y=lungs[side].dome_y - rng.uniform(0.03, 0.05))
        mid_x += lungs[side].lateral * rng.uniform(0.008, 0.015)
    thorax = (lungs[1].cx + lungs[1].ax) - (lungs[0].cx - lungs[0].ax)
    ctr = p["ctr"]
    if "Cardiomegaly" in has:
        ctr = rng.uniform(0.57, 0.66)
    elif "Emphysema" in has:  # long narrow "tubular" heart
        ctr *= 0.85
    if ap:  # AP magnifies the anterior heart
        ctr *= 1.06
    heart_w = ctr * thorax / 2.0
    heart_h = p["heart_h"] * (1.05 if ap else 1.0)
    heart_base = max(l.dome_y for l in lungs) + 0.015
    return Anatomy(
        sex=film.sex, view=film.view, pose=pose,
        body_ax=0.46 * (0.96 if film.sex == "F" else 1.0), body_ay=0.58,
        lungs=(lungs[0], lungs[1]),
        heart_x=mid_x + 0.3 * heart_w, heart_y=heart_base - 0.55 * heart_h,
        heart_w=heart_w, heart_h=heart_h, mid_x=mid_x, med_w=0.045,
        hilum_y=p["lung_cy"] - 0.1,
        rib_top=p["rib_top"], rib_step=p["rib_step"], rib_bend=p["rib_bend"],
        clavicle_y=p["clavicle_y"] - (0.02 if ap else 0.0),
        tissue=p["tissue"], lung_air=lung_air, heart_gain=0.17,
        bone_gain=p["bone_gain"] * rng.uniform(0.92, 1.08),
        vessel_gain=p["vessel_gain"] * (0.35 if "Emphysema" in has else 1.0),
        contrast=p["contrast"] * rng.uniform(0.96, 1.04) * (0.92 if ap else 1.0),
        offset=p["offset"] + rng.uniform(-0.015, 0.015) + (0.03 if ap else 0.0),
        gamma=p["gamma"] * rng.uniform(0.97, 1.03),
        noise=rng.uniform(0.008, 0.016) * (1.25 if ap else 1.0),
    )


# --------------------------------------------------------------------------
# The film being drawn: anatomical coordinate grids plus density layers.
# --------------------------------------------------------------------------

class Film:
    """Working canvas at `res` px. Layers are in density units (0 = black)."""

    def __init__(self, anatomy: Anatomy, res: int, rng: np.random.Generator):
        self.a, self.res, self.rng = anatomy, res, rng
        self.X, self.Y = anatomical_grid(anatomy.pose, res)
        self.edge = 1.5 / res  # soft edges ~1.5 px keep shapes alias-free
        z = lambda: np.zeros((res, res), F32)  # noqa: E731
        self.bone, self.vessels, self.opacity, self.lucency = z(), z(), z(), z()
        self.vessel_keep = np.ones((res, res), F32)  # 0 where markings vanish
        self.bone_keep = np.ones((res, res), F32)
        self.body = self.heart = self.mediastinum = self.abdomen = None
        self.lungs = self.lung_side = None

    def to_px(self, x: float, y: float) -> tuple[int, int]:
        """Anatomical point -> cv2 fixed-point (shift=4) pixel coordinates."""
        fx, fy = self.a.pose.to_film(x, y)
        return int(round((fx * self.res - 0.5) * 16)), int(round((fy * self.res - 0.5) * 16))

    def px(self, length: float) -> int:
        """A length in anatomical units as a whole number of pixels (>= 1)."""
        return max(1, int(round(length * self.a.pose.scale * self.res)))


def anatomical_grid(pose: Pose, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical (x, y) of every film pixel centre: the inverse pose."""
    t = ((np.arange(res, dtype=F32) + F32(0.5)) / F32(res)) - F32(0.5)
    fx, fy = t[None, :] - F32(pose.dx), t[:, None] - F32(pose.dy)
    c, s = math.cos(pose.angle) / pose.scale, math.sin(pose.angle) / pose.scale
    X = F32(0.5) + F32(c) * fx + F32(s) * fy
    Y = F32(0.5) - F32(s) * fx + F32(c) * fy
    return X.astype(F32), Y.astype(F32)


def ramp(signed, edge: float) -> np.ndarray:
    """0 -> 1 across a band of `edge` centred on signed == 0."""
    t = signed * F32(1.0 / edge)
    t += F32(0.5)
    return np.clip(t, F32(0.0), F32(1.0), out=t)


def ellipse_radius(f: Film, cx, cy, ax, ay, angle: float = 0.0) -> np.ndarray:
    """Normalised elliptical radius (1 on the outline)."""
    dx, dy = f.X - F32(cx), f.Y - F32(cy)
    if angle:
        c, s = F32(math.cos(angle)), F32(math.sin(angle))
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((dx * F32(1.0 / ax)) ** 2 + (dy * F32(1.0 / ay)) ** 2)


def ellipse(f: Film, cx, cy, ax, ay, edge=None, angle: float = 0.0) -> np.ndarray:
    r = ellipse_radius(f, cx, cy, ax, ay, angle)
    return ramp((F32(1.0) - r) * F32(min(ax, ay)), edge or f.edge)


def blob(f: Film, cx, cy, sx, sy) -> np.ndarray:
    return np.exp(F32(-0.5) * (((f.X - F32(cx)) * F32(1 / sx)) ** 2
                               + ((f.Y - F32(cy)) * F32(1 / sy)) ** 2))


def smooth_noise(f: Film, cells: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Band-limited random field: a few random cells, bicubically upsampled."""
    g = f.rng.uniform(lo, hi, (cells, cells)).astype(F32)
    return cv2.resize(g, (f.res, f.res), interpolation=cv2.INTER_CUBIC)


def stroke_canvas(f: Film) -> np.ndarray:
    return np.zeros((f.res, f.res), np.uint8)


def strokes_to_layer(canvas: np.ndarray, sigma_px: float = 0.7) -> np.ndarray:
    """Anti-aliased 8-bit line drawing -> softened 0..1 float layer."""
    layer = canvas.astype(F32) * F32(1 / 255)
    return cv2.GaussianBlur(layer, (0, 0), sigma_px)


def dome_y(f: Film, lung: Lung) -> np.ndarray:
    return F32(lung.dome_y) + F32(lung.dome_k) * (f.X - F32(lung.dome_x)) ** 2


def mask_box(mask: np.ndarray, frac: float) -> tuple[int, int, int, int]:
    """Pixel bounding box (x0, y0, x1, y1), exclusive ends, of mask > frac*max."""
    peak = float(mask.max())
    if peak <= 0.0:
        raise RuntimeError("a planted finding left no trace on the film")
    hot = mask > F32(frac * peak)
    ys, xs = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


# --------------------------------------------------------------------------
# Normal anatomy
# --------------------------------------------------------------------------

def draw_body(f: Film) -> np.ndarray:
    a = f.a
    # A superellipse reads as a torso with shoulders rather than an egg.
    dx = np.abs(f.X - F32(0.5)) * F32(1 / a.body_ax)
    dy = np.abs(f.Y - F32(0.62)) * F32(1 / a.body_ay)
    torso = ramp((F32(1) - np.cbrt(dx * dx * dx + dy * dy * dy)) * F32(a.body_ax), 0.012)
    neck = ramp(F32(0.13) - np.abs(f.X - F32(0.5)), 0.03) * ramp(F32(0.2) - f.Y, 0.05)
    f.body = np.maximum(torso, neck)
    return f.body * F32(a.tissue)


def draw_lungs(f: Film) -> None:
    """Air-filled lungs: ellipses cut by the domes, mediastinum and heart."""
    a = f.a
    f.mediastinum = draw_mediastinum_mask(f)
    f.heart = draw_heart_mask(f)
    outside = (F32(1.0) - f.mediastinum) * (F32(1.0) - F32(0.88) * f.heart)
    f.lung_side = []
    for lung in a.lungs:
        shape = ellipse(f, lung.cx, lung.cy, lung.ax, lung.ay, edge=0.006)
        above_dome = ramp(dome_y(f, lung) - f.Y, 0.006)
        f.lung_side.append(shape * above_dome * outside)
    f.lungs = f.lung_side[0] + f.lung_side[1]


def draw_mediastinum_mask(f: Film) -> np.ndarray:
    """Central soft-tissue column; the aortic knob bulges to the film's right."""
    a = f.a
    knob = F32(0.022) * np.exp(F32(-0.5) * ((f.Y - F32(a.hilum_y - 0.13)) * F32(1 / 0.035)) ** 2)
    dx = f.X - F32(a.mid_x)
    half = np.where(dx > 0, F32(a.med_w) + knob, F32(a.med_w))
    return ramp(half - np.abs(dx), 0.008) * ramp(F32(a.heart_y) - f.Y, 0.05)


def draw_heart_mask(f: Film) -> np.ndarray:
    a = f.a
    heart = ellipse(f, a.heart_x, a.heart_y, a.heart_w, a.heart_h, edge=0.006)
    # The heart sits on the diaphragm and fades into the equally dense abdomen.
    floor = max(l.dome_y for l in a.lungs) + 0.03
    return heart * ramp(F32(floor) - f.Y, 0.05)


def draw_abdomen(f: Film) -> np.ndarray:
    """Liver and bowel below the domes: nearly as dense as the heart."""
    a = f.a
    # Blend the two domes across the midline; a hard switch leaves a seam
    # whenever one dome is raised.
    w = ramp(f.X - F32(a.mid_x), 0.08)
    own = dome_y(f, a.lungs[0]) * (F32(1) - w) + dome_y(f, a.lungs[1]) * w
    # Under the heart the two domes meet; the cap only bites near the midline.
    centre = F32(0.5 * (a.lungs[0].dome_y + a.lungs[1].dome_y) + 0.03)
    cap = centre + F32(4) * np.maximum(np.abs(f.X - F32(a.mid_x)) - F32(0.08), F32(0))
    domes = np.minimum(own, cap)
    f.abdomen = ramp(f.Y - domes - F32(0.01), 0.03) * f.body
    return f.abdomen * F32(0.12)


def draw_trachea(f: Film) -> np.ndarray:
    a = f.a
    tube = ramp(F32(0.011) - np.abs(f.X - F32(a.mid_x)), 0.005)
    return tube * ramp(F32(a.hilum_y - 0.07) - f.Y, 0.02)


def draw_spine(f: Film) -> None:
    a = f.a
    column = ramp(F32(0.034) - np.abs(f.X - F32(a.mid_x)), 0.008)
    # Disc spaces: a faint periodic dip along the column.
    discs = F32(0.8) + F32(0.2) * np.cos(f.Y * F32(2 * math.pi / 0.043))
    f.bone += column * discs * F32(0.07)


def draw_clavicles(f: Film) -> None:
    a = f.a
    for sign in (-1.0, 1.0):
        u = (f.X - F32(a.mid_x)) * F32(sign)
        t = np.clip((u - F32(0.05)) * F32(1 / 0.27), F32(0), F32(1))
        centre = F32(a.clavicle_y + 0.035) - F32(0.06) * t + F32(0.02) * np.sin(t * F32(math.pi))
        along = ramp(u - F32(0.05), 0.01) * ramp(F32(0.33) - u, 0.03)
        f.bone += ramp(F32(0.011) - np.abs(f.Y - centre), 0.005) * along * F32(0.16)


def draw_ribs(f: Film) -> None:
    """Posterior ribs as bright arcs, fainter anterior ribs sloping the other way."""
    a = f.a
    n_ribs = 10
    for sign in (-1.0, 1.0):
        u = np.maximum((f.X - F32(a.mid_x)) * F32(sign / 0.33), F32(0))
        # Dense heart and abdomen swamp the thin ribs behind them.
        hidden = F32(1) - F32(0.8) * f.heart - F32(0.9) * f.abdomen
        lateral = ramp(u - F32(0.08), 0.03) * ramp(F32(1.12) - u, 0.04)
        # Posterior: rise slightly from the spine, then curve down laterally.
        v = f.Y - (F32(-0.03) * u + F32(a.rib_bend) * u * u)
        f.bone += rib_bands(v, a.rib_top, a.rib_step, n_ribs, 0.55) * lateral * F32(0.1) * hidden
        # Anterior: slope down towards the sternum, fade medially.
        v2 = f.Y - F32(0.12) * (F32(1) - u) ** 2
        front = ramp(u - F32(0.3), 0.2)
        f.bone += rib_bands(v2, a.rib_top + 0.06, a.rib_step * 0.9, 7, 0.45) * lateral * front * F32(0.04)


def rib_bands(v: np.ndarray, top: float, step: float, n: int, duty: float) -> np.ndarray:
    """`n` bands along v, each `duty` of a period thick; spacing widens caudally."""
    phase = (v - F32(top)) * F32(1 / step)
    phase = np.maximum(phase, F32(0))
    phase *= F32(1) - F32(0.011) * phase  # ~phase**0.95, cheaper than pow
    frac = phase - np.floor(phase)
    band = np.sqrt(np.clip(np.sin(frac * F32(math.pi / duty)), F32(0), F32(1)))
    band *= frac < F32(duty)
    return band * ramp(F32(n) - phase, 0.5) * ramp(v - F32(top), 0.004)


def draw_vessels(f: Film) -> None:
    """Branching vascular trees from each hilum, thickest centrally."""
    a = f.a
    canvas = stroke_canvas(f)
    for lung in a.lungs:
        hx = a.mid_x + lung.lateral * 0.085
        for ang in (-65, -35, -5, 25, 55):
            ang = math.radians(ang + f.rng.uniform(-10, 10))
            draw_tree(f, canvas, hx, a.hilum_y + 0.03, ang, lung.lateral,
                      length=0.085, width=0.007, depth=5)
    f.vessels = strokes_to_layer(canvas) * F32(0.09 * a.vessel_gain)
    f.vessels += blob(f, a.mid_x - 0.09, a.hilum_y + 0.03, 0.03, 0.04) * F32(0.05)
    f.vessels += blob(f, a.mid_x + 0.09, a.hilum_y + 0.02, 0.03, 0.04) * F32(0.05)


def draw_tree(f: Film, canvas, x, y, angle, lateral, length, width, depth, value=255):
    """Recursive bifurcating polyline; angle 0 points laterally, +down."""
    rng = f.rng
    stack = [(x, y, angle, length, width, depth)]
    while stack:
        x, y, ang, ln, w, d = stack.pop()
        x2 = x + lateral * ln * math.cos(ang)
        y2 = y + ln * math.sin(ang)
        cv2.line(canvas, f.to_px(x, y), f.to_px(x2, y2), value, f.px(w), cv2.LINE_AA, 4)
        if d > 1:
            for turn in (-1.0, 1.0):
                child = ang + turn * math.radians(rng.uniform(14, 34))
                stack.append((x2, y2, child, ln * rng.uniform(0.62, 0.8), w * 0.72, d - 1))


def draw_breasts(f: Film) -> np.ndarray:
    a = f.a
    shadow = np.zeros_like(f.X)
    for lung in a.lungs:
        shadow += ellipse(f, lung.cx + lung.lateral * 0.02, lung.dome_y + 0.02,
                          0.16, 0.11, edge=0.05) * ramp(f.Y - F32(lung.dome_y - 0.06), 0.04)
    return shadow * F32(0.06)


def draw_scapulae(f: Film) -> None:
    """AP films project the scapulae over the upper lateral lungs."""
    for lung in f.a.lungs:
        f.bone += ellipse(f, lung.cx + lung.lateral * 0.13, lung.cy - 0.22, 0.06, 0.13,
                          edge=0.01, angle=lung.lateral * 0.25) * F32(0.05)


# --------------------------------------------------------------------------
# Findings. Each plant_* adds to the film's layers and returns a map whose
# bright part is the finding; its bounding box becomes the NIH box.
# --------------------------------------------------------------------------

def point_in_lung(f: Film, lung: Lung, r_max: float = 0.7, margin: float = 0.0,
                  y_range: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """A random point well inside `lung`, clear of heart, mediastinum and dome."""
    a, rng = f.a, f.rng
    for _ in range(500):
        t, rho = rng.uniform(0, 2 * math.pi), r_max * math.sqrt(rng.uniform(0, 1))
        x = lung.cx + lung.ax * rho * math.cos(t)
        y = lung.cy + lung.ay * rho * math.sin(t)
        dome = lung.dome_y + lung.dome_k * (x - lung.dome_x) ** 2
        rel = (y - lung.cy + lung.ay) / (2 * lung.ay)
        in_heart = ((x - a.heart_x) / (a.heart_w + margin)) ** 2 \
            + ((y - a.heart_y) / (a.heart_h + margin)) ** 2 < 1.0
        medial = abs(x - a.mid_x) < a.med_w + 0.02 + margin
        if y < dome - 0.02 - margin and not in_heart and not medial \
                and y_range[0] <= rel <= y_range[1]:
            return x, y
    return lung.cx + lung.lateral * 0.3 * lung.ax, lung.cy - 0.2 * lung.ay


def pick_lung(f: Film) -> Lung:
    return f.a.lungs[int(f.rng.integers(0, 2))]


def plant_nodule(f: Film) -> np.ndarray:
    r = f.rng.uniform(0.02, 0.035) / f.a.pose.scale
    x, y = point_in_lung(f, pick_lung(f), r_max=0.7, margin=r)
    d2 = ((f.X - F32(x)) ** 2 + (f.Y - F32(y)) ** 2) * F32(1 / r**2)
    m = np.sqrt(np.clip(F32(1) - d2, F32(0), F32(1))) ** F32(0.6)
    f.opacity += m * F32(f.rng.uniform(0.2, 0.32))
    return m


def plant_mass(f: Film) -> np.ndarray:
    rng = f.rng
    r = rng.uniform(0.06, 0.09) / f.a.pose.scale
    x, y = point_in_lung(f, pick_lung(f), r_max=0.55, margin=0.3 * r)
    theta = np.arctan2(f.Y - F32(y), f.X - F32(x))
    lobes = F32(1)
    for k in (3, 5, 7):  # lobulated outline
        lobes = lobes + F32(rng.uniform(0.04, 0.09)) * np.sin(F32(k) * theta + F32(rng.uniform(0, 6.3)))
    d2 = ((f.X - F32(x)) ** 2 + (f.Y - F32(y)) ** 2) / (F32(r) * lobes) ** 2
    m = np.clip(F32(1) - d2, F32(0), F32(1)) ** F32(0.35)
    f.opacity += m * F32(rng.uniform(0.24, 0.34))
    f.vessel_keep *= F32(1) - F32(0.8) * m  # solid tissue hides the vessels
    return m


def plant_effusion(f: Film) -> np.ndarray:
    """Fluid fills the base up to a meniscus that climbs the lateral wall."""
    rng, lung = f.rng, pick_lung(f)
    side = f.lung_side[lung.side]
    lateral_dome = lung.dome_y + lung.dome_k * (lung.ax + 0.02) ** 2
    level = lateral_dome - rng.uniform(0.13, 0.22)
    lat = np.clip((f.X - F32(lung.cx)) * F32(lung.lateral / lung.ax), F32(0), F32(1))
    surface = F32(level) - F32(rng.uniform(0.05, 0.09)) * lat * lat
    m = side * ramp(f.Y - surface, 0.012)
    # A little denser than the chest wall so the fluid reads as its own shadow.
    f.opacity += m * F32(f.a.lung_air * rng.uniform(0.95, 1.05) + 0.07)
    f.vessel_keep *= F32(1) - m
    return m


def plant_pneumothorax(f: Film) -> np.ndarray:
    """Air between chest wall and a collapsed lung: lucent, no markings."""
    rng, lung = f.rng, pick_lung(f)
    d = rng.uniform(0.035, 0.07)
    cx = lung.cx - lung.lateral * 0.6 * d
    collapsed_r = ellipse_radius(f, cx, lung.cy + 1.3 * d, lung.ax - 0.6 * d, lung.ay - 0.5 * d)
    inner = ramp((F32(1) - collapsed_r) * F32(lung.ax), 0.004)
    rim = f.lung_side[lung.side] * (F32(1) - inner)
    pleura = ramp(F32(0.0025) - np.abs(F32(1) - collapsed_r) * F32(lung.ax), 0.002)
    pleura *= ramp(f.lung_side[lung.side] - F32(0.5), 0.3)
    f.vessel_keep *= F32(1) - rim
    f.bone_keep *= F32(1) - F32(0.6) * rim
    f.lucency += rim * F32(rng.uniform(0.1, 0.15))
    f.opacity += pleura * F32(0.14) + inner * f.lung_side[lung.side] * F32(0.03)
    return rim


def plant_cardiomegaly(f: Film) -> np.ndarray:
    # The heart itself was widened in build_anatomy; the box is the heart.
    return f.heart


def plant_emphysema(f: Film) -> np.ndarray:
    rng = f.rng
    f.lucency += f.lungs * F32(rng.uniform(0.07, 0.1))
    for _ in range(int(rng.integers(1, 3))):  # bullae: lucent, thin-walled
        lung = pick_lung(f)
        x, y = point_in_lung(f, lung, r_max=0.7, y_range=(0.0, 0.45))
        r = rng.uniform(0.025, 0.045)
        rr = ellipse_radius(f, x, y, r, r)
        inside = ramp(F32(1) - rr, 0.1)
        f.lucency += inside * f.lungs * F32(0.06)
        f.vessel_keep *= F32(1) - inside
        f.opacity += ramp(F32(0.12) - np.abs(F32(1) - rr), 0.08) * f.lungs * F32(0.06)
    return f.lung_side[pick_lung(f).side]


def plant_atelectasis(f: Film) -> np.ndarray:
    rng = f.rng
    lung = pick_lung(f)
    if rng.random() < 0.6:  # plate-like (discoid) band at a base
        x, y = point_in_lung(f, lung, r_max=0.55, y_range=(0.5, 0.85))
        length, thick = rng.uniform(0.12, 0.2), rng.uniform(0.022, 0.035)
        m = band(f, x, y, length, thick, math.radians(rng.uniform(-20, 20)))
    else:  # segmental wedge: apex at the hilum, base on the lateral pleura
        m = wedge(f, lung)
    m = m * ramp(f.lung_side[lung.side] * F32(1.5), 0.5)
    f.opacity += m * F32(rng.uniform(0.22, 0.3))
    f.vessel_keep *= F32(1) - F32(0.7) * m
    return m


def band(f: Film, x, y, length, thick, angle) -> np.ndarray:
    c, s = F32(math.cos(angle)), F32(math.sin(angle))
    dx, dy = f.X - F32(x), f.Y - F32(y)
    along, across = c * dx + s * dy, -s * dx + c * dy
    return ramp(F32(length / 2) - np.abs(along), 0.02) * ramp(F32(thick / 2) - np.abs(across), 0.006)


def wedge(f: Film, lung: Lung) -> np.ndarray:
    rng = f.rng
    hx, hy = f.a.mid_x + lung.lateral * 0.09, f.a.hilum_y + 0.05
    base_y = rng.uniform(0.5, 0.62)
    tip = (hx, hy)
    outer = lung.cx + lung.lateral * lung.ax * 1.05
    lo, hi = base_y - rng.uniform(0.05, 0.08), base_y + rng.uniform(0.05, 0.08)
    canvas = stroke_canvas(f)
    pts = np.array([f.to_px(*tip), f.to_px(outer, lo), f.to_px(outer, hi)], np.int32)
    cv2.fillPoly(canvas, [pts], 255, cv2.LINE_AA, 4)
    return strokes_to_layer(canvas, sigma_px=f.res / 256)


def patchy(f: Film, x, y, rho, n_blobs) -> np.ndarray:
    """Union of a few Gaussian puffs around (x, y), softly thresholded."""
    rng, acc = f.rng, np.zeros_like(f.X)
    for _ in range(n_blobs):
        bx, by = x + rng.normal(0, 0.45 * rho), y + rng.normal(0, 0.45 * rho)
        s = rng.uniform(0.3, 0.55) * rho
        acc = np.maximum(acc, blob(f, bx, by, s, s * rng.uniform(0.8, 1.25)))
    return np.clip((acc - F32(0.3)) * F32(1 / 0.35), F32(0), F32(1))


def plant_consolidation(f: Film) -> np.ndarray:
    rng, lung = f.rng, pick_lung(f)
    rho = rng.uniform(0.05, 0.08)
    x, y = point_in_lung(f, lung, r_max=0.6, margin=0.3 * rho)
    m = patchy(f, x, y, rho, int(rng.integers(4, 8))) * ramp(f.lung_side[lung.side] * F32(1.3), 0.6)
    canvas = stroke_canvas(f)  # air bronchograms: dark branching tubes
    for _ in range(2):
        draw_tree(f, canvas, x - lung.lateral * 0.5 * rho, y + rng.uniform(-0.5, 0.5) * rho,
                  math.radians(rng.uniform(-40, 40)), lung.lateral,
                  length=0.5 * rho, width=0.006, depth=3)
    bronchi = strokes_to_layer(canvas, 0.6)
    amp = rng.uniform(0.26, 0.34)
    f.opacity += m * F32(amp) * (F32(1) - F32(0.6) * bronchi)
    f.vessel_keep *= F32(1) - m
    return m


def plant_infiltration(f: Film) -> np.ndarray:
    rng, lung = f.rng, pick_lung(f)
    rho = rng.uniform(0.08, 0.13)
    x, y = point_in_lung(f, lung, r_max=0.6)
    haze = blob(f, x, y, rho / 1.8, rho / 1.5) * smooth_noise(f, 11, 0.3, 1.0)
    m = np.clip(haze * F32(1.6), F32(0), F32(1)) * ramp(f.lung_side[lung.side] * F32(1.3), 0.6)
    f.opacity += m * F32(rng.uniform(0.18, 0.25))
    return m


def plant_pneumonia(f: Film) -> np.ndarray:
    """Lobar: a whole zone goes white, bounded by one straight sharp fissure."""
    rng = f.rng
    lung = pick_lung(f)
    zones = ("upper", "lower", "middle") if lung.side == 0 else ("upper", "lower")
    zone = zones[int(rng.integers(0, len(zones)))]
    tilt = F32(rng.uniform(-0.12, 0.12))
    fissure = F32(f.a.hilum_y + rng.uniform(-0.02, 0.04)) + tilt * (f.X - F32(lung.cx))
    if zone == "upper":
        region = ramp(fissure - f.Y, 0.005)
    elif zone == "lower":
        region = ramp(f.Y - fissure - F32(0.04), 0.05)
    else:  # right middle lobe: sharp above, fades below, hugs the heart border
        region = ramp(f.Y - fissure, 0.005) * ramp(fissure + F32(0.14) - f.Y, 0.05)
        region *= ramp((F32(lung.cx) - f.X) * F32(lung.lateral) + F32(0.4 * lung.ax), 0.08)
    mottle = smooth_noise(f, 24, 0.7, 1.0)
    m = region * f.lung_side[lung.side] * mottle
    f.opacity += m * F32(rng.uniform(0.28, 0.36))
    f.vessel_keep *= F32(1) - F32(0.8) * m
    return m


def plant_edema(f: Film) -> np.ndarray:
    """Bilateral perihilar bat-wing haze plus Kerley B lines at both bases."""
    rng, a = f.rng, f.a
    wings = np.zeros_like(f.X)
    for lung in a.lungs:
        wings += blob(f, a.mid_x + lung.lateral * 0.12, a.hilum_y + 0.03,
                      rng.uniform(0.07, 0.09), rng.uniform(0.09, 0.12))
    wings = np.clip(wings, F32(0), F32(1)) * np.clip(f.lungs * F32(1.3), F32(0), F32(1))
    canvas = stroke_canvas(f)
    for lung in a.lungs:
        draw_kerley_lines(f, canvas, lung)
    kerley = strokes_to_layer(canvas, 0.6) * np.clip(f.lungs * F32(2), F32(0), F32(1))
    f.opacity += wings * F32(rng.uniform(0.15, 0.22)) + kerley * F32(0.25)
    return np.maximum(wings, kerley)


def draw_kerley_lines(f: Film, canvas, lung: Lung) -> None:
    """Short horizontal septal lines reaching the lateral pleura near the base."""
    rng = f.rng
    edge_dome = lung.dome_y + lung.dome_k * (lung.ax * 0.9) ** 2
    for _ in range(int(rng.integers(5, 10))):
        y = edge_dome - rng.uniform(0.03, 0.14)
        dy = (y - lung.cy) / lung.ay
        x_edge = lung.cx + lung.lateral * lung.ax * math.sqrt(max(0.0, 1 - dy * dy)) * 0.98
        x_in = x_edge - lung.lateral * rng.uniform(0.03, 0.055)
        cv2.line(canvas, f.to_px(x_in, y), f.to_px(x_edge, y), 255, f.px(0.004), cv2.LINE_AA, 4)


def plant_fibrosis(f: Film) -> np.ndarray:
    """Reticular net of fine lines over a mild haze, upper and peripheral."""
    rng, lung = f.rng, pick_lung(f)
    rho = rng.uniform(0.07, 0.1)
    x = lung.cx + lung.lateral * lung.ax * rng.uniform(0.25, 0.5)
    y = lung.cy - lung.ay * rng.uniform(0.35, 0.55)
    region = blob(f, x, y, rho * 0.7, rho * 0.8)
    region = np.clip((region - F32(0.15)) * F32(1.6), F32(0), F32(1)) * f.lung_side[lung.side]
    canvas = stroke_canvas(f)
    draw_net(f, canvas, x, y, rho, rng.uniform(0.018, 0.026))
    net = strokes_to_layer(canvas, 0.6)
    m = region * (F32(0.3) + net)
    f.opacity += region * F32(0.07) + region * net * F32(rng.uniform(0.24, 0.32))
    return m


def draw_net(f: Film, canvas, x, y, rho, step) -> None:
    rng = f.rng
    n = int(2 * rho / step) + 2
    jitter = rng.uniform(-0.3, 0.3, (n, n, 2)) * step
    pts = [[(x - rho + i * step + jitter[i, j, 0], y - rho + j * step + jitter[i, j, 1])
            for j in range(n)] for i in range(n)]
    w = f.px(0.0045)
    for i in range(n):
        for j in range(n):
            for di, dj in ((1, 0), (0, 1)):
                if i + di < n and j + dj < n and rng.random() < 0.85:
                    cv2.line(canvas, f.to_px(*pts[i][j]), f.to_px(*pts[i + di][j + dj]),
                             255, w, cv2.LINE_AA, 4)


def plant_pleural_thickening(f: Film) -> np.ndarray:
    """Smooth soft-tissue band hugging the lateral chest wall over a stretch."""
    rng, lung = f.rng, pick_lung(f)
    r = ellipse_radius(f, lung.cx, lung.cy, lung.ax, lung.ay)
    thick = F32(rng.uniform(0.016, 0.03)) * (F32(1) + F32(0.25) * np.sin(f.Y * F32(rng.uniform(30, 60))))
    depth = (F32(1) - r) * F32(lung.ax)
    y0 = lung.cy - lung.ay * rng.uniform(0.2, 0.6)
    y1 = y0 + rng.uniform(0.12, 0.22)
    lateral = ramp((f.X - F32(lung.cx)) * F32(lung.lateral) - F32(0.35 * lung.ax), 0.02)
    m = ramp(thick - depth, 0.006) * lateral * ramp(f.Y - F32(y0), 0.02) * ramp(F32(y1) - f.Y, 0.02)
    m *= ramp(f.lung_side[lung.side] - F32(0.2), 0.3)
    f.opacity += m * F32(f.a.lung_air * rng.uniform(0.9, 1.05) + 0.04)
    f.vessel_keep *= F32(1) - m
    return m


def plant_hernia(f: Film) -> np.ndarray:
    """Hiatal hernia: round retrocardiac opacity with a gas bubble and level."""
    rng, a = f.rng, f.a
    r = rng.uniform(0.045, 0.065)
    x = a.mid_x + rng.uniform(-0.01, 0.04)
    y = min(l.dome_y for l in a.lungs) - r * rng.uniform(0.3, 0.7)
    rr = ellipse_radius(f, x, y, r * 1.15, r)
    sac = ramp((F32(1) - rr) * F32(r), 0.004)
    level = y + r * rng.uniform(-0.2, 0.2)
    gas = ramp((F32(0.8) - rr) * F32(r), 0.004) * ramp(F32(level) - f.Y, 0.003)
    wall = ramp(F32(0.12) - np.abs(F32(1) - rr), 0.06)
    f.opacity += sac * F32(0.1) + wall * F32(0.08) - gas * F32(rng.uniform(0.3, 0.4))
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
BOX_THRESHOLD = {f: 0.1 for f in FINDINGS} | {"Cardiomegaly": 0.5, "Emphysema": 0.5,
                                              "Pneumothorax": 0.3}


# --------------------------------------------------------------------------
# Rendering one film
# --------------------------------------------------------------------------

FINDING_GAIN = 1.6


def render_film(film: FilmRecord, seed: int, image_size: int
                ) -> tuple[np.ndarray, list[tuple[str, float, float, float, float]]]:
    """The 8-bit film and its boxes (finding, x, y, w, h) in film pixels."""
    patient_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, film.patient_id)))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, film.index)))
    anatomy = build_anatomy(sample_patient_anatomy(patient_rng, film.sex), rng, film)
    f = Film(anatomy, min(image_size, WORK_RES_MAX), rng)
    base = draw_normal_anatomy(f)
    opacity, lucency = f.opacity.copy(), f.lucency.copy()
    maps = {name: PLANTERS[name](f) for name in FINDINGS if name in film.findings}
    # Findings are drawn more conspicuous than on real films so that a short
    # from-scratch CPU run can learn them (the phantom tests the pipeline).
    f.opacity = opacity + F32(FINDING_GAIN) * (f.opacity - opacity)
    f.lucency = lucency + F32(FINDING_GAIN) * (f.lucency - lucency)
    density = compose(f, base)
    scale = image_size / f.res
    boxes = []
    for name, m in maps.items():
        x0, y0, x1, y1 = mask_box(m, BOX_THRESHOLD[name])
        boxes.append((name, x0 * scale, y0 * scale, (x1 - x0) * scale, (y1 - y0) * scale))
    return expose(f, density, image_size), boxes


def draw_normal_anatomy(f: Film) -> np.ndarray:
    """Tissue density without the lungs' air; the bone and vessel layers fill in."""
    a = f.a
    tissue = draw_body(f)
    draw_lungs(f)
    tissue += f.heart * F32(a.heart_gain)
    tissue += f.mediastinum * F32(0.1) - draw_trachea(f) * F32(0.12)
    tissue += draw_abdomen(f)
    if a.sex == "F":
        tissue += draw_breasts(f)
    draw_spine(f)
    draw_clavicles(f)
    draw_ribs(f)
    if a.view == "AP":
        draw_scapulae(f)
    draw_vessels(f)
    return tissue


def compose(f: Film, tissue: np.ndarray) -> np.ndarray:
    a = f.a
    texture = smooth_noise(f, max(8, f.res // 24), -1.0, 1.0) * F32(0.02)
    air = f.lungs * (F32(a.lung_air) + texture)
    density = tissue - air - f.lucency
    density += f.bone * f.bone_keep * f.body * F32(a.bone_gain)
    density += f.vessels * f.vessel_keep * np.clip(f.lungs * F32(1.5), F32(0), F32(1))
    density += f.opacity
    density += smooth_noise(f, 5, -1.0, 1.0) * F32(0.025)
    return density


def expose(f: Film, density: np.ndarray, image_size: int) -> np.ndarray:
    """Density -> detector grey levels: exposure curve, upsampling, quantum noise."""
    a = f.a
    grey = np.clip(F32(a.offset) + F32(a.contrast) * density, F32(0), F32(1)) ** F32(a.gamma)
    grey *= F32(255)
    if f.res != image_size:
        grey = cv2.resize(grey, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    noise = f.rng.standard_normal((image_size, image_size), dtype=F32)
    noise *= F32(a.noise * 255)
    # One saturating, rounding pass straight to 8 bits.
    return cv2.add(grey, noise, dtype=cv2.CV_8U)


def encode_png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _render_to_file(job: tuple[FilmRecord, int, int, str]) -> list[tuple[str, float, float, float, float]]:
    """Worker entry point: render, write the PNG, hand back the boxes."""
    film, seed, image_size, images_dir = job
    pixels, boxes = render_film(film, seed, image_size)
    Path(images_dir, film.image_id).write_bytes(encode_png(pixels))
    return boxes


# --------------------------------------------------------------------------
# The data set on disk
# --------------------------------------------------------------------------

def data_entry_line(film: FilmRecord, image_size: int) -> str:
    spacing = f"{NIH_PIXEL_SPACING_1024 * 1024 / image_size:.3f}"
    labels = format_finding_labels([int(f in film.findings) for f in FINDINGS])
    return (f"{film.image_id},{labels},{film.follow_up},{film.patient_id},{film.age},"
            f"{film.sex},{film.view},{image_size},{image_size},{spacing},{spacing},")


def bbox_line(image_id: str, box: tuple[str, float, float, float, float]) -> str:
    name, x, y, w, h = box
    return f"{image_id},{name},{x:.1f},{y:.1f},{w:.1f},{h:.1f},,,"


def _render_all(jobs, workers: int, progress: bool):
    """Boxes per film, in film order."""
    counter = Progress(len(jobs), "phantom", lines=10) if progress else None
    results = []
    for boxes in ordered_map(_render_to_file, jobs, workers):
        results.append(boxes)
        if counter:
            counter.advance()
    return results


def _write_tables(tmp: Path, films: list[FilmRecord], boxes: list, image_size: int) -> None:
    entries = [DATA_ENTRY_HEADER] + [data_entry_line(f, image_size) for f in films]
    (tmp / "Data_Entry_2017.csv").write_text("\n".join(entries) + "\n", encoding="utf-8")
    rows = [BBOX_HEADER] + [bbox_line(f.image_id, b) for f, bs in zip(films, boxes) for b in bs]
    (tmp / "BBox_List_2017.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def generate_phantom(out_dir: Path, n_images: int, seed: int, image_size: int = 1024,
                     workers: int = 1, progress: bool = True) -> dict:
    """Write the phantom data set into out_dir and return a summary dict
    {"images": n, "patients": p, "positives": {finding: count}, "no_finding": k, "boxes": b}."""
    if n_images < 1:
        raise ValueError("n_images must be >= 1")
    if image_size < 64:
        raise ValueError("image_size must be >= 64")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    films = plan_films(n_images, seed)
    with atomic_dir(out_dir) as staging:
        (staging / "images").mkdir()
        jobs = [(film, seed, image_size, str(staging / "images")) for film in films]
        boxes = _render_all(jobs, workers, progress)
        _write_tables(staging, films, boxes, image_size)
    return {
        "images": len(films),
        "patients": films[-1].patient_id,
        "positives": {name: sum(name in f.findings for f in films) for name in FINDINGS},
        "no_finding": sum(not f.findings for f in films),
        "boxes": sum(len(b) for b in boxes),
    }


PHANTOM_NOT_USED = (
    "Not used: ingest.source is {source}, so the phantom stage generated nothing.\n"
    "Set ingest.source: phantom (and ingest.root: {root}) to train on the synthetic phantom.\n"
)


def write_phantom(params: dict) -> dict:
    """The phantom stage: generate the synthetic NIH-format root at paths.phantom
    when ingest.source is phantom; otherwise leave only a note there, so the
    stage costs nothing for users of real data. Returns a short summary."""
    from pipeline.config import phantom_root, section, worker_count

    ingest, out = section(params, "ingest"), phantom_root(params)
    if ingest["source"] != "phantom":
        with atomic_dir(out) as staging:
            (staging / "NOT_USED.txt").write_text(PHANTOM_NOT_USED.format(source=ingest["source"], root=out))
        return {"images": 0}
    phantom = ingest["phantom"]
    return generate_phantom(
        out, n_images=int(phantom["n_images"]), seed=int(params["seed"]),
        image_size=int(phantom["image_size"]), workers=worker_count(ingest.get("workers")),
    )
