"""The synthetic chest radiograph phantom on disk, in NIH ChestX-ray14's format.

`generate_phantom` writes ``images/<patient>_<follow-up>.png`` (8-bit grey,
PA or AP), ``Data_Entry_2017.csv`` and ``BBox_List_2017.csv`` exactly as NIH
lays them out, so every later stage can be exercised without the real 45 GB
release. `write_phantom` is the phantom stage: the data set when the
pipeline's source is the phantom, otherwise only a note.

How it is made: plan.py decides every film's labels, anatomy.py and
findings.py draw it on geometry.py's canvas, render.py exposes it and finds
the boxes. The label plan and every film are seeded from `seed` alone, so the
bytes depend neither on `workers` nor on the order films finish in.

`subgroup_gap` (ingest.phantom.subgroup_gap, default 0 = off) plants a
subgroup effect: in one fixed slice, women under 40 (plan.in_subgroup), every
finding is drawn fainter by that fraction (render.py says how), so slice
metrics have a known gap to find. Labels and the other films are untouched.

`second_site` (ingest.phantom.second_site): a seeded share of the films is
rendered as another hospital's detector shows them (render.SiteLook: exposure,
noise, collimation, a burned-in marker), and ``sites.csv`` (Image Index, site)
says which, so a drift monitor can be checked against the truth. A share of 0
(the default) writes exactly the data set there was before sites existed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.atomic import atomic_dir
from pipeline.core.labels import FINDINGS, format_finding_labels
from pipeline.core.parallel import ordered_map
from pipeline.core.progress import Progress
from pipeline.phantom.plan import FilmRecord, plan_films
from pipeline.phantom.render import FIRST_SITE, Box, SiteLook, check_subgroup_gap, encode_png, render_film

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
NIH_PIXEL_SPACING_1024 = 0.143
PHANTOM_NOT_USED = (
    "Not used: ingest.source is {source}, so the phantom stage generated nothing.\n"
    "Set ingest.source: phantom (and ingest.root: {root}) to train on the synthetic phantom.\n"
)


def data_entry_line(record: FilmRecord, image_size: int) -> str:
    spacing = f"{NIH_PIXEL_SPACING_1024 * 1024 / image_size:.3f}"
    labels = format_finding_labels([int(finding in record.findings) for finding in FINDINGS])
    return (f"{record.image_id},{labels},{record.follow_up},{record.patient_id},{record.age},"
            f"{record.sex},{record.view},{image_size},{image_size},{spacing},{spacing},")


def bbox_line(image_id: str, box: Box) -> str:
    finding, x, y, width, height = box
    return f"{image_id},{finding},{x:.1f},{y:.1f},{width:.1f},{height:.1f},,,"


SITES_FILE = "sites.csv"


@dataclass(frozen=True)
class SecondSite:
    """The share of films rendered as a second site, and how that site shows them."""

    share: float = 0.0
    look: SiteLook = FIRST_SITE


NO_SECOND_SITE = SecondSite()


def second_site_films(records: list[FilmRecord], seed: int, share: float) -> list[bool]:
    """Whether each film is the second site's: a draw per film, seeded by (seed, film), so
    a film's site depends neither on the others nor on the order they are rendered in."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"second_site.share must be in [0, 1], got {share}")
    return [bool(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, record.index))).random() < share)
            for record in records]


def _render_to_file(job: tuple[FilmRecord, int, int, str, float, SiteLook]) -> list[Box]:
    """Worker entry point: render, write the PNG, hand back the boxes."""
    record, seed, image_size, images_dir, subgroup_gap, site = job
    pixels, boxes = render_film(record, seed, image_size, subgroup_gap, site)
    Path(images_dir, record.image_id).write_bytes(encode_png(pixels))
    return boxes


def _render_all(jobs, workers: int, progress: bool) -> list[list[Box]]:
    """Boxes per film, in film order."""
    counter = Progress(len(jobs), "phantom", lines=10) if progress else None
    results = []
    for boxes in ordered_map(_render_to_file, jobs, workers):
        results.append(boxes)
        if counter:
            counter.advance()
    return results


def _write_tables(staging: Path, records: list[FilmRecord], boxes: list[list[Box]], image_size: int) -> None:
    entries = [DATA_ENTRY_HEADER] + [data_entry_line(record, image_size) for record in records]
    (staging / "Data_Entry_2017.csv").write_text("\n".join(entries) + "\n", encoding="utf-8")
    rows = [BBOX_HEADER] + [bbox_line(record.image_id, box)
                            for record, film_boxes in zip(records, boxes) for box in film_boxes]
    (staging / "BBox_List_2017.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def generate_phantom(out_dir: Path, n_images: int, seed: int, image_size: int = 1024,
                     workers: int = 1, progress: bool = True, subgroup_gap: float = 0.0,
                     second_site: SecondSite = NO_SECOND_SITE) -> dict:
    """Write the phantom data set into out_dir and return a summary dict
    {"images": n, "patients": p, "positives": {finding: count}, "no_finding": k, "boxes": b,
    "second_site": films rendered as the second site}.
    subgroup_gap in [0, 1): how much fainter findings are drawn on women under 40."""
    if n_images < 1:
        raise ValueError("n_images must be >= 1")
    if image_size < 64:
        raise ValueError("image_size must be >= 64")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    subgroup_gap = check_subgroup_gap(subgroup_gap)
    records = plan_films(n_images, seed)
    second = second_site_films(records, seed, second_site.share)
    with atomic_dir(out_dir) as staging:
        (staging / "images").mkdir()
        jobs = [(record, seed, image_size, str(staging / "images"), subgroup_gap,
                 second_site.look if is_second else FIRST_SITE) for record, is_second in zip(records, second)]
        boxes = _render_all(jobs, workers, progress)
        _write_tables(staging, records, boxes, image_size)
        if second_site.share > 0:  # the truth a drift monitor is checked against; absent when off
            lines = ["Image Index,site"] + [f"{r.image_id},{2 if s else 1}" for r, s in zip(records, second)]
            (staging / SITES_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "images": len(records),
        "patients": records[-1].patient_id,
        "positives": {finding: sum(finding in record.findings for record in records) for finding in FINDINGS},
        "no_finding": sum(not record.findings for record in records),
        "boxes": sum(len(film_boxes) for film_boxes in boxes),
        "second_site": sum(second),
    }


def write_phantom(out_dir: Path, source: str, n_images: int, seed: int, image_size: int,
                  workers: int = 1, progress: bool = True, subgroup_gap: float = 0.0,
                  second_site: SecondSite = NO_SECOND_SITE) -> dict:
    """The phantom stage: generate the synthetic NIH-format root in out_dir when
    the pipeline's data source is "phantom"; for any other source leave only a
    note there, so the stage costs nothing for users of real data. Returns
    generate_phantom's summary, or {"images": 0} for the note."""
    if source != "phantom":
        with atomic_dir(out_dir) as staging:
            (staging / "NOT_USED.txt").write_text(PHANTOM_NOT_USED.format(source=source, root=out_dir))
        return {"images": 0}
    return generate_phantom(out_dir, n_images=n_images, seed=seed, image_size=image_size,
                            workers=workers, progress=progress, subgroup_gap=subgroup_gap, second_site=second_site)
