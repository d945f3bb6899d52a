"""Ingest: from an NIH-format data root to the manifest (one row per image)."""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from pipeline.labels import BOX_LABEL_ALIASES, FINDINGS, LabelError, parse_finding_labels
from pipeline.manifest import MANIFEST_COLUMNS
from pipeline.nih import (
    BBOX_FILE_NAME,
    IMAGE_ID_PATTERN,
    MetadataError,
    find_metadata_csv,
    index_images,
    read_nih_metadata,
)
from pipeline.split import assign_patient_splits


def display_path(path: Path) -> str:
    """Relative to the project root when inside it, so the manifest (and its
    DVC hash) does not depend on where the project is cloned."""
    absolute = path.absolute()
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return absolute.as_posix()


def label_matrix(metadata: pd.DataFrame, source: Path) -> pd.DataFrame:
    """The 14 multi-hot columns, with an error naming the line of a bad label."""
    rows = []
    for text, line in zip(metadata["finding_labels"], metadata["line"]):
        try:
            rows.append(parse_finding_labels(text))
        except LabelError as exc:
            raise MetadataError(f"{source}: line {line}: {exc}") from exc
    return pd.DataFrame(rows, columns=list(FINDINGS), index=metadata.index, dtype="int64")


def build_manifest(
    root: Path,
    split_ratios: dict[str, float],
    seed: int,
    require_all_images: bool = False,
    path_root: Path | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Join the metadata CSV with the images on disk and split patient-wise.

    `path_root`: where root will live when the manifest is read, if it is
    being built somewhere else first. Returns the manifest and a report of
    what was found, kept and dropped.
    """
    root = Path(root)
    path_root = Path(path_root) if path_root is not None else root
    if not root.is_dir():
        raise MetadataError(f"{root}: data root is not a directory")
    csv_path = find_metadata_csv(root)
    metadata = read_nih_metadata(csv_path)
    bad_ids = ~metadata["image_id"].str.match(IMAGE_ID_PATTERN.pattern)
    if bad_ids.any():
        first = metadata.index[bad_ids][0]
        raise MetadataError(
            f"{csv_path}: line {metadata.at[first, 'line']}: Image Index "
            f"{metadata.at[first, 'image_id']!r} is not a file name like 00000001_000.png"
        )
    duplicated = metadata["image_id"].duplicated()
    if duplicated.any():
        first = metadata.index[duplicated][0]
        raise MetadataError(
            f"{csv_path}: line {metadata.at[first, 'line']}: duplicate Image Index "
            f"{metadata.at[first, 'image_id']!r}"
        )
    images = index_images(root)
    on_disk = metadata["image_id"].isin(images.keys())
    unlisted = sorted(set(images) - set(metadata["image_id"]))
    missing = int((~on_disk).sum())
    if require_all_images and (missing or unlisted):
        raise MetadataError(
            f"{root}: {missing} listed image(s) not on disk, {len(unlisted)} image(s) on disk "
            f"not in {csv_path.name} (ingest.require_all_images is true)"
        )
    kept = metadata[on_disk].copy()
    if kept.empty:
        raise MetadataError(f"{root}: none of the {len(metadata)} images in {csv_path.name} is on disk")
    labels = label_matrix(kept, csv_path)
    manifest = pd.concat([kept, labels], axis=1)
    manifest["path"] = [display_path(path_root / images[i].relative_to(root)) for i in manifest["image_id"]]
    manifest["split"] = assign_patient_splits(manifest["patient_id"], split_ratios, seed)
    manifest = manifest[list(MANIFEST_COLUMNS)].reset_index(drop=True)
    report = {
        "metadata_csv": display_path(csv_path),
        "rows_in_csv": int(len(metadata)),
        "images_on_disk": int(len(images)),
        "rows_without_image": missing,
        "images_without_row": len(unlisted),
        "images_without_row_examples": unlisted[:10],
        "manifest_rows": int(len(manifest)),
        "patients": int(manifest["patient_id"].nunique()),
        "split_images": {s: int(n) for s, n in manifest["split"].value_counts().sort_index().items()},
    }
    return manifest, report


def read_boxes(root: Path, image_ids: set[str]) -> pd.DataFrame:
    """NIH's BBox_List_2017.csv (if present) as image_id, finding, x, y, w, h,
    for the given images; coordinates are pixels of the original image."""
    path = Path(root) / BBOX_FILE_NAME
    rows = []
    if path.is_file():
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if not ",".join(header).startswith("Image Index,Finding Label"):
                raise MetadataError(f"{path}: line 1: not NIH's box list header: {','.join(header)[:80]}")
            for line, fields in enumerate(reader, start=2):
                fields = [f for f in fields if f != ""]
                if not fields:
                    continue
                if len(fields) != 6:
                    raise MetadataError(f"{path}: line {line}: expected 6 fields, got {len(fields)}")
                image_id, finding = fields[0], BOX_LABEL_ALIASES.get(fields[1], fields[1])
                if finding not in FINDINGS:
                    raise MetadataError(f"{path}: line {line}: unknown finding {finding!r}")
                try:
                    box = [float(v) for v in fields[2:]]
                except ValueError as exc:
                    raise MetadataError(f"{path}: line {line}: box coordinates are not numbers: {exc}") from exc
                if image_id in image_ids:
                    rows.append([image_id, finding, *box])
    return pd.DataFrame(rows, columns=["image_id", "finding", "x", "y", "w", "h"])


def ingest_into(staging: Path, params: dict) -> dict:
    """The ingest stage: generate the phantom when asked, then write the manifest
    and the box list into `staging` (the future paths.ingest_dir). Returns the report."""
    from pipeline.config import path_of, section, worker_count
    from pipeline.phantom import generate_phantom

    ingest = section(params, "ingest")
    ingest_dir, root = path_of(params, "ingest_dir"), Path(ingest["root"])
    seed = int(params["seed"])
    if ingest["source"] == "phantom":
        if not root.absolute().is_relative_to(ingest_dir.absolute()):
            raise MetadataError(f"ingest.root {root} must lie inside {ingest_dir} when ingest.source is phantom")
        data_root = staging / root.absolute().relative_to(ingest_dir.absolute())
        phantom = ingest["phantom"]
        generate_phantom(
            data_root, n_images=int(phantom["n_images"]), seed=seed,
            image_size=int(phantom["image_size"]), workers=worker_count(ingest.get("workers")),
        )
    elif ingest["source"] == "nih":
        data_root = root
    else:
        raise MetadataError(f"ingest.source must be 'phantom' or 'nih', got {ingest['source']!r}")
    manifest, report = build_manifest(
        data_root, ingest["split"], seed, bool(ingest.get("require_all_images", False)), path_root=root
    )
    manifest.to_csv(staging / path_of(params, "manifest").name, index=False, lineterminator="\n")
    boxes = read_boxes(data_root, set(manifest["image_id"]))
    boxes.to_csv(staging / path_of(params, "boxes").name, index=False, lineterminator="\n")
    report["source"] = ingest["source"]
    report["boxes"] = int(len(boxes))
    return report
