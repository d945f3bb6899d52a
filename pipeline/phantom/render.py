"""Rendering one phantom film: anatomy, findings, exposure, and the findings' boxes.

Determinism: a patient's anatomy comes from ``SeedSequence(seed,
spawn_key=(2, patient_id))``; a film's jitter, findings placement and noise
from ``spawn_key=(1, image_index)``. No global RNG state is used, so a film's
bytes do not depend on which process renders it, or in what order.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.core.labels import FINDINGS
from pipeline.phantom.anatomy import build_anatomy, draw_normal_anatomy, sample_patient_anatomy
from pipeline.phantom.findings import BOX_THRESHOLD, PLANTERS
from pipeline.phantom.geometry import F32, Film, smooth_noise
from pipeline.phantom.plan import FilmRecord

# Smooth anatomy is rendered at most at this size, then upsampled; only the
# noise is drawn at full resolution. Keeps a 1024 px film well under 80 ms.
WORK_RES_MAX = 512
# Findings are drawn more conspicuous than on real films so that a short
# from-scratch CPU run can learn them (the phantom tests the pipeline).
FINDING_GAIN = 1.6

Box = tuple[str, float, float, float, float]  # finding, x, y, w, h in film pixels


def render_film(record: FilmRecord, seed: int, image_size: int) -> tuple[np.ndarray, list[Box]]:
    """The 8-bit film and its boxes (finding, x, y, w, h) in film pixels."""
    patient_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, record.patient_id)))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, record.index)))
    anatomy = build_anatomy(sample_patient_anatomy(patient_rng, record.sex), rng, record)
    film = Film(anatomy, min(image_size, WORK_RES_MAX), rng)
    tissue = draw_normal_anatomy(film)
    opacity, lucency = film.opacity.copy(), film.lucency.copy()
    maps = {finding: PLANTERS[finding](film) for finding in FINDINGS if finding in record.findings}
    film.opacity = opacity + F32(FINDING_GAIN) * (film.opacity - opacity)
    film.lucency = lucency + F32(FINDING_GAIN) * (film.lucency - lucency)
    density = compose(film, tissue)
    scale = image_size / film.res
    boxes = []
    for finding, finding_map in maps.items():
        x0, y0, x1, y1 = mask_box(finding_map, BOX_THRESHOLD[finding])
        boxes.append((finding, x0 * scale, y0 * scale, (x1 - x0) * scale, (y1 - y0) * scale))
    return expose(film, density, image_size), boxes


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


def expose(film: Film, density: np.ndarray, image_size: int) -> np.ndarray:
    """Density -> detector grey levels: exposure curve, upsampling, quantum noise."""
    anatomy = film.anatomy
    grey = np.clip(F32(anatomy.offset) + F32(anatomy.contrast) * density, F32(0), F32(1)) ** F32(anatomy.gamma)
    grey *= F32(255)
    if film.res != image_size:
        grey = cv2.resize(grey, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    noise = film.rng.standard_normal((image_size, image_size), dtype=F32)
    noise *= F32(anatomy.noise * 255)
    # One saturating, rounding pass straight to 8 bits.
    return cv2.add(grey, noise, dtype=cv2.CV_8U)


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
