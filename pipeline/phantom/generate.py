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

`shortcut` (ingest.phantom.shortcut): a chest drain (render.draw_drain) on a
seeded share of the films with one finding and on another share of the rest,
and a `Drain` column (1/0) in Data_Entry_2017.csv (in NIH's empty last
column) that says which: a shortcut planted at known strength, and the truth
a labelled or an unlabelled audit is checked against. Both shares 0 (the
default) write exactly the data set there was before.
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


DRAIN_COLUMN = "Drain"


def data_entry_line(record: FilmRecord, image_size: int, drain: bool | None = None) -> str:
    """NIH's row; with `drain` (True/False), the Drain column's 1/0 in NIH's empty last column."""
    spacing = f"{NIH_PIXEL_SPACING_1024 * 1024 / image_size:.3f}"
    labels = format_finding_labels([int(finding in record.findings) for finding in FINDINGS])
    return (f"{record.image_id},{labels},{record.follow_up},{record.patient_id},{record.age},"
            f"{record.sex},{record.view},{image_size},{image_size},{spacing},{spacing},"
            + ("" if drain is None else str(int(drain))))


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


@dataclass(frozen=True)
class Shortcut:
    """A chest drain on `share_with` of the films with `finding` and on `share_without` of the others."""

    finding: str = "Pneumothorax"
    share_with: float = 0.0
    share_without: float = 0.0

    @property
    def planted(self) -> bool:
        return self.share_with > 0 or self.share_without > 0


NO_SHORTCUT = Shortcut()


def drain_films(records: list[FilmRecord], seed: int, shortcut: Shortcut) -> list[bool]:
    """Whether each film has a drain: a draw per film, seeded by (seed, film)."""
    if shortcut.finding not in FINDINGS:
        raise ValueError(f"shortcut.finding must be one of {', '.join(FINDINGS)}, got {shortcut.finding!r}")
    for name in ("share_with", "share_without"):
        if not 0.0 <= getattr(shortcut, name) <= 1.0:
            raise ValueError(f"shortcut.{name} must be in [0, 1], got {getattr(shortcut, name)}")
    draws = [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(5, r.index))).random() for r in records]
    return [bool(u < (shortcut.share_with if shortcut.finding in r.findings else shortcut.share_without))
            for r, u in zip(records, draws)]


def second_site_films(records: list[FilmRecord], seed: int, share: float) -> list[bool]:
    """Whether each film is the second site's: a draw per film, seeded by (seed, film), so
    a film's site depends neither on the others nor on the order they are rendered in."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"second_site.share must be in [0, 1], got {share}")
    return [bool(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, record.index))).random() < share)
            for record in records]


def _render_to_file(job: tuple[FilmRecord, int, int, str, float, SiteLook, bool]) -> list[Box]:
    """Worker entry point: render, write the PNG, hand back the boxes."""
    record, seed, image_size, images_dir, subgroup_gap, site, drain = job
    pixels, boxes = render_film(record, seed, image_size, subgroup_gap, site, drain)
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


def _write_tables(staging: Path, records: list[FilmRecord], boxes: list[list[Box]], image_size: int,
                  drains: list[bool] | None = None) -> None:
    """The two CSVs; with `drains`, the Drain column too."""
    header = DATA_ENTRY_HEADER + (DRAIN_COLUMN if drains is not None else "")
    entries = [header] + [data_entry_line(record, image_size, None if drains is None else drains[i])
                          for i, record in enumerate(records)]
    (staging / "Data_Entry_2017.csv").write_text("\n".join(entries) + "\n", encoding="utf-8")
    rows = [BBOX_HEADER] + [bbox_line(record.image_id, box)
                            for record, film_boxes in zip(records, boxes) for box in film_boxes]
    (staging / "BBox_List_2017.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def generate_phantom(out_dir: Path, n_images: int, seed: int, image_size: int = 1024,
                     workers: int = 1, progress: bool = True, subgroup_gap: float = 0.0,
                     second_site: SecondSite = NO_SECOND_SITE, shortcut: Shortcut = NO_SHORTCUT) -> dict:
    """Write the phantom data set into out_dir and return a summary dict
    {"images": n, "patients": p, "positives": {finding: count}, "no_finding": k, "boxes": b,
    "second_site": films rendered as the second site, "drains": films with a drain}.
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
    drains = drain_films(records, seed, shortcut)
    with atomic_dir(out_dir) as staging:
        (staging / "images").mkdir()
        jobs = [(record, seed, image_size, str(staging / "images"), subgroup_gap,
                 second_site.look if is_second else FIRST_SITE, drain)
                for record, is_second, drain in zip(records, second, drains)]
        boxes = _render_all(jobs, workers, progress)
        _write_tables(staging, records, boxes, image_size, drains if shortcut.planted else None)
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
        "drains": sum(drains),
    }


def write_phantom(out_dir: Path, source: str, n_images: int, seed: int, image_size: int,
                  workers: int = 1, progress: bool = True, subgroup_gap: float = 0.0,
                  second_site: SecondSite = NO_SECOND_SITE, shortcut: Shortcut = NO_SHORTCUT) -> dict:
    """The phantom stage: generate the synthetic NIH-format root in out_dir when
    the pipeline's data source is "phantom"; for any other source leave only a
    note there, so the stage costs nothing for users of real data. Returns
    generate_phantom's summary, or {"images": 0} for the note."""
    if source != "phantom":
        with atomic_dir(out_dir) as staging:
            (staging / "NOT_USED.txt").write_text(PHANTOM_NOT_USED.format(source=source, root=out_dir))
        return {"images": 0}
    return generate_phantom(out_dir, n_images=n_images, seed=seed, image_size=image_size,
                            workers=workers, progress=progress, subgroup_gap=subgroup_gap, second_site=second_site,
                            shortcut=shortcut)
