"""Rendering one phantom film: anatomy, findings, exposure, and the findings' boxes.

Determinism: a patient's anatomy comes from ``SeedSequence(seed,
spawn_key=(2, patient_id))``; a film's jitter, findings placement and noise
from ``spawn_key=(1, image_index)``. No global RNG state is used, so a film's
bytes do not depend on which process renders it, or in what order.

Subgroup gap (ingest.phantom.subgroup_gap, a strength in [0, 1)): on films in
plan.in_subgroup's fixed slice (women under 40) every finding is drawn
fainter. Its departure from the normal film is scaled by 1 - gap: the
planted opacity and lucency (their contrast), the markings it hides, and the
structural signs build_anatomy moves (cardiomegaly's heart, emphysema's
hyperinflation, atelectasis's raised dome). Labels stay as they are and
films outside the slice (or without findings) come out byte-identical; in a
slice film the boxes may move a little where a faded structural sign
reshapes the lungs that findings are placed in. 0 (the default) takes
exactly the code path there was before the gap existed.

Second site (ingest.phantom.second_site): a film rendered with a SiteLook
other than FIRST_SITE is exposed as another hospital's detector would show
it: a different exposure (gain on the grey levels), more quantum noise, a
collimator leaving each side's margin unexposed (white), and an "R" marker
burned into a corner. Anatomy, findings, labels and boxes are the first
site's; only the exposure differs, so a monitor has a known drift to find.
FIRST_SITE takes exactly the code path there was before sites existed.

Shortcut (ingest.phantom.shortcut): draw_drain lays a chest drain, a bright
tube curving from the lower lateral chest wall up towards the apex, over a
film, as a treated patient's film shows one. It carries no label; planted on
most films of one finding, it is a shortcut a model can learn instead of the
finding (Oakden-Rayner et al. 2020). A film without it is untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.core.labels import FINDINGS
from pipeline.phantom.anatomy import build_anatomy, draw_normal_anatomy, sample_patient_anatomy
from pipeline.phantom.findings import BOX_THRESHOLD, PLANTERS
from pipeline.phantom.geometry import F32, Film, smooth_noise
from pipeline.phantom.plan import FilmRecord, in_subgroup

# Smooth anatomy is rendered at most at this size, then upsampled; only the
# noise is drawn at full resolution. Keeps a 1024 px film well under 80 ms.
WORK_RES_MAX = 512
# Findings are drawn more conspicuous than on real films so that a short
# from-scratch CPU run can learn them (the phantom tests the pipeline).
FINDING_GAIN = 1.6

Box = tuple[str, float, float, float, float]  # finding, x, y, w, h in film pixels
# The grey level of a collimated (unexposed) margin: near white, as on a detector.
COLLIMATED_GREY = 235


@dataclass(frozen=True)
class SiteLook:
    """How a site's detector shows a film (see the module docstring)."""

    exposure: float = 1.0  # gain on the grey levels
    noise: float = 1.0  # quantum noise, times the first site's
    collimation: float = 0.0  # fraction of each side left unexposed
    marker: bool = False  # a burned-in "R" in the top-left corner


FIRST_SITE = SiteLook()


def check_subgroup_gap(subgroup_gap: float) -> float:
    gap = float(subgroup_gap)
    if not 0.0 <= gap < 1.0:
        raise ValueError(f"subgroup_gap must be in [0, 1), got {subgroup_gap}")
    return gap


def render_film(record: FilmRecord, seed: int, image_size: int, subgroup_gap: float = 0.0,
                site: SiteLook = FIRST_SITE, drain: bool = False) -> tuple[np.ndarray, list[Box]]:
    """The 8-bit film and its boxes (finding, x, y, w, h) in film pixels.
    subgroup_gap fades the findings of films in plan.in_subgroup's slice;
    `site` is the detector that shows it, `drain` whether a chest drain lies on it (see above)."""
    gap = check_subgroup_gap(subgroup_gap)
    fade = gap if gap and record.findings and in_subgroup(record) else 0.0
    patient_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, record.patient_id)))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, record.index)))
    anatomy = build_anatomy(sample_patient_anatomy(patient_rng, record.sex), rng, record, fade)
    film = Film(anatomy, min(image_size, WORK_RES_MAX), rng)
    tissue = draw_normal_anatomy(film)
    opacity, lucency = film.opacity.copy(), film.lucency.copy()
    keeps = (film.vessel_keep.copy(), film.bone_keep.copy()) if fade else None
    maps = {finding: PLANTERS[finding](film) for finding in FINDINGS if finding in record.findings}
    gain = FINDING_GAIN * (1.0 - fade)  # exactly FINDING_GAIN when fade is 0
    film.opacity = opacity + F32(gain) * (film.opacity - opacity)
    film.lucency = lucency + F32(gain) * (film.lucency - lucency)
    if fade:
        fade_hidden_markings(film, *keeps, fade)
    density = compose(film, tissue)
    scale = image_size / film.res
    boxes = []
    for finding, finding_map in maps.items():
        x0, y0, x1, y1 = mask_box(finding_map, BOX_THRESHOLD[finding])
        boxes.append((finding, x0 * scale, y0 * scale, (x1 - x0) * scale, (y1 - y0) * scale))
    pixels = expose(film, density, image_size, site)
    pixels = pixels if site == FIRST_SITE else site_marks(pixels, site)
    return (draw_drain(pixels, seed, record.index) if drain else pixels), boxes


# The grey levels of a drain's radio-opaque wall and of its lumen, and its width as a fraction of the film.
DRAIN_WALL_GREY, DRAIN_LUMEN_GREY, DRAIN_WIDTH = 245, 200, 0.012


def draw_drain(pixels: np.ndarray, seed: int, index: int) -> np.ndarray:
    """A chest drain over an 8-bit film (in place; any size and aspect): a tube
    along a quadratic curve from the lower right chest wall (the film's left)
    up towards the apex, its path jittered per film by (seed, index)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(6, index)))
    height, width = pixels.shape[:2]
    entry = np.array([rng.uniform(0.10, 0.16), rng.uniform(0.62, 0.74)])
    bend = np.array([rng.uniform(0.06, 0.12), rng.uniform(0.36, 0.46)])
    tip = np.array([rng.uniform(0.26, 0.34), rng.uniform(0.16, 0.24)])
    t = np.linspace(0.0, 1.0, 64)[:, None]
    path = ((1 - t) ** 2 * entry + 2 * (1 - t) * t * bend + t ** 2 * tip) * np.array([width, height])
    points = np.round(path * 16).astype(np.int32).reshape(-1, 1, 2)  # 4 fractional bits
    tube = max(2, round(DRAIN_WIDTH * min(height, width)))
    cv2.polylines(pixels, [points], False, DRAIN_WALL_GREY, tube, cv2.LINE_AA, shift=4)
    cv2.polylines(pixels, [points], False, DRAIN_LUMEN_GREY, max(1, tube // 3), cv2.LINE_AA, shift=4)
    return pixels


def fade_hidden_markings(film: Film, vessel_keep: np.ndarray, bone_keep: np.ndarray, fade: float) -> None:
    """Give back `fade` of the vessels and ribs the findings hid (keeps: before planting)."""
    film.vessel_keep = vessel_keep + F32(1.0 - fade) * (film.vessel_keep - vessel_keep)
    film.bone_keep = bone_keep + F32(1.0 - fade) * (film.bone_keep - bone_keep)


def compose(film: Film, tissue: np.ndarray) -> np.ndarray:
    """All layers summed into one density image at the working resolution."""
    anatomy = film.anatomy
    texture = smooth_noise(film, max(8, film.res // 24), -1.0, 1.0) * F32(0.02)
    air = film.lungs * (F32(anatomy.lung_air) + texture)
    density = tissue - air - film.lucency
    density += film.bone * film.bone_keep * film.body * F32(anatomy.bone_gain)
    density += film.vessels * film.vessel_keep * np.clip(film.lungs * F32(1.5), F32(0), F32(1))
    density += film.opacity
    density += smooth_noise(film, 5, -1.0, 1.0) * F32(0.025)
    return density


def expose(film: Film, density: np.ndarray, image_size: int, site: SiteLook = FIRST_SITE) -> np.ndarray:
    """Density -> detector grey levels: exposure curve, upsampling, quantum noise."""
    anatomy = film.anatomy
    grey = np.clip(F32(anatomy.offset) + F32(anatomy.contrast) * density, F32(0), F32(1)) ** F32(anatomy.gamma)
    grey *= F32(255)
    if site.exposure != 1.0:
        grey *= F32(site.exposure)
    if film.res != image_size:
        grey = cv2.resize(grey, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    noise = film.rng.standard_normal((image_size, image_size), dtype=F32)
    noise *= F32(anatomy.noise * 255 * site.noise)
    # One saturating, rounding pass straight to 8 bits.
    return cv2.add(grey, noise, dtype=cv2.CV_8U)


def site_marks(pixels: np.ndarray, site: SiteLook) -> np.ndarray:
    """The collimator's unexposed margins and the burned-in marker of a second site."""
    size = pixels.shape[0]
    margin = round(site.collimation * size)
    if margin:
        for band in (pixels[:margin], pixels[-margin:], pixels[:, :margin], pixels[:, -margin:]):
            band[...] = np.maximum(band, COLLIMATED_GREY)
    if site.marker:
        scale = size / 256
        cv2.putText(pixels, "R", (margin + round(8 * scale), margin + round(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.9 * scale, 255, max(1, round(2 * scale)), cv2.LINE_AA)
    return pixels


def mask_box(mask: np.ndarray, frac: float) -> tuple[int, int, int, int]:
    """Pixel bounding box (x0, y0, x1, y1), exclusive ends, of mask > frac*max."""
    peak = float(mask.max())
    if peak <= 0.0:
        raise RuntimeError("a planted finding left no trace on the film")
    hot = mask > F32(frac * peak)
    ys, xs = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def encode_png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
