"""Explain: heatmaps of the test split that a reader can check against the truth.

- A gallery: per finding, the top-k true positives, the k highest-scoring
  false positives and the k lowest-scoring missed films at evaluate's
  thresholds, one overlay each, in one offline page (pipeline.explain.gallery).
- Localisation scores: the heatmap of every test image with a ground-truth
  box for a finding (up to a cap), scored with the pointing game and T(IoBB)
  (pipeline.explain.localisation), next to a random map's scores.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd

from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import uses_patient_metadata
from pipeline.core.patient import PATIENT_INPUT
from pipeline.core.settings import ExplainSettings
from pipeline.core.tracking import metric_name
from pipeline.explain.gradcam import (
    feature_map_shape,
    grad_cam,
    overlay_heatmap,
    random_grids,
    to_heatmaps,
)
from pipeline.explain.localisation import (
    RANDOM_PREFIX,
    SCORE_COLUMNS,
    Box,
    detected_boxes,
    iobb_key,
    score_heatmap,
)
from pipeline.records.dataset import decode_record, shard_files

TRUE_POSITIVE, FALSE_POSITIVE, MISSED = "TP", "FP", "FN"
# evaluate's list of the missed films of each flagged stratum (pipeline.model.strata.MISSED_FILE), when
# evaluate.strata is set; named here too so that explain does not load the statistics that wrote it
STRATA_MISSED_FILE = "strata_missed.json"
REPORT_FILE = "explain.json"  # in reports/gradcam/: the whole record, metrics/explain.json its summary
EXAMPLE_COLUMNS = ["image_id", "finding", "kind", "probability", "threshold"]
LOCALISATION_COLUMNS = ["image_id", "finding", *SCORE_COLUMNS, *(RANDOM_PREFIX + c for c in SCORE_COLUMNS)]
# Overlay colours (BGR): ground truth, the heatmap's detected regions, its peak.
TRUTH_COLOUR, DETECTED_COLOUR, PEAK_COLOUR = (0, 255, 0), (255, 255, 255), (255, 0, 255)

Pair = tuple[str, str]  # (image_id, finding)


def select_examples(
    predictions: pd.DataFrame, thresholds: dict[str, float], top_k: int, false_positives: int,
    false_negatives: int = 0,
) -> pd.DataFrame:
    """Per finding (FINDINGS order), the top_k true positives, the
    false_positives highest-scoring false positives (images flagged by the
    finding's threshold, prob >= threshold, with label 1, resp. 0), then the
    false_negatives lowest-scoring missed films (label 1, prob < threshold:
    the films the model is surest are clear, where a reader looks for what
    the misses share); ties by image_id. Columns EXAMPLE_COLUMNS."""
    rows = []
    for finding in FINDINGS:
        label, prob, threshold = f"label_{finding}", f"prob_{finding}", float(thresholds[finding])
        flagged = predictions[predictions[prob] >= threshold].sort_values([prob, "image_id"], ascending=[False, True])
        missed = predictions[(predictions[prob] < threshold) & (predictions[label] == 1)]
        chosen = ((TRUE_POSITIVE, flagged[flagged[label] == 1].head(top_k)),
                  (FALSE_POSITIVE, flagged[flagged[label] == 0].head(false_positives)),
                  (MISSED, missed.sort_values([prob, "image_id"]).head(false_negatives)))
        for kind, films in chosen:
            for _, row in films.iterrows():
                rows.append([row["image_id"], finding, kind, float(row[prob]), threshold])
    return pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)


def missed_counts(predictions: pd.DataFrame, thresholds: dict[str, float]) -> dict[str, dict[str, int]]:
    """{finding: {"missed": positives scoring below its threshold, "positives": test films with it}}:
    how many missed films the gallery's few stand for."""
    counts = {}
    for finding in FINDINGS:
        positive = predictions[f"label_{finding}"] == 1
        below = predictions[f"prob_{finding}"] < float(thresholds[finding])
        counts[finding] = {"missed": int((positive & below).sum()), "positives": int(positive.sum())}
    return counts


def missed_examples(groups: list[dict], predictions: pd.DataFrame, thresholds: dict[str, float],
                    per_group: int) -> pd.DataFrame:
    """The first `per_group` films of each flagged stratum's missed ones
    (evaluate's strata_missed.json, lowest score first), as EXAMPLE_COLUMNS
    rows of kind FN, plus "group": the group's index."""
    scores = predictions.set_index("image_id")
    rows = []
    for index, group in enumerate(groups):
        finding = group["finding"]
        for image_id in group["image_ids"][:per_group]:
            rows.append([image_id, finding, MISSED, float(scores.loc[image_id, f"prob_{finding}"]),
                         float(thresholds[finding]), index])
    return pd.DataFrame(rows, columns=[*EXAMPLE_COLUMNS, "group"])


def localisation_targets(boxes: pd.DataFrame, test_ids: set[str], max_images: int, seed: int) -> pd.DataFrame:
    """The boxes of the test images to score: all boxed test images, or a
    seeded sample of max_images of them; sorted by image and finding."""
    boxed = boxes[boxes["image_id"].isin(test_ids)]
    image_ids = sorted(boxed["image_id"].unique())
    if len(image_ids) > max_images:
        image_ids = np.random.default_rng(seed).choice(image_ids, max_images, replace=False).tolist()
    chosen = boxed[boxed["image_id"].isin(image_ids)]
    return chosen.sort_values(["image_id", "finding"], kind="stable").reset_index(drop=True)


def load_test_images(tfrecord_dir: Path, image_ids: set[str]) -> dict[str, dict]:
    """The wanted test images (uint8, (size, size, 1)) and their original
    (width, height), from the shards."""
    import tensorflow as tf

    found: dict[str, dict] = {}
    for record in tf.data.TFRecordDataset(shard_files(tfrecord_dir, "test")).map(decode_record):
        key = record["image_id"].numpy().decode()
        if key in image_ids:
            size = (int(record["orig_width"]), int(record["orig_height"]))
            found[key] = {"image": record["image"].numpy(), "orig_size": size,
                          "metadata": record[PATIENT_INPUT].numpy()}
    missing = sorted(image_ids - found.keys())
    if missing:
        raise FileNotFoundError(f"{len(missing)} test image(s) of evaluate's predictions are not in the test "
                                f"shards of {tfrecord_dir}, e.g. {missing[0]} (rerun evaluate)")
    return found


def box_to_model_coordinates(box, orig_size: tuple[int, int], image_size: int, fit: str) -> Box:
    """Map an (x, y, w, h) box on the original image onto the square model input."""
    width, height = orig_size
    x, y, w, h = box
    side = min(width, height) if fit == "crop" else max(width, height)
    scale = image_size / side
    offset_x, offset_y = (width - side) / 2, (height - side) / 2
    return ((x - offset_x) * scale, (y - offset_y) * scale, w * scale, h * scale)


def truth_boxes(
    boxes: pd.DataFrame, images: dict[str, dict], image_size: int, fit: str
) -> dict[Pair, list[Box]]:
    """The boxes of the loaded images in model-input coordinates, by (image_id, finding)."""
    truth: dict[Pair, list[Box]] = {}
    for row in boxes[boxes["image_id"].isin(images.keys())].itertuples(index=False):
        box = box_to_model_coordinates((row.x, row.y, row.w, row.h), images[row.image_id]["orig_size"],
                                       image_size, fit)
        truth.setdefault((row.image_id, row.finding), []).append(box)
    return truth


def heatmap_batches(
    model: keras.Model, pairs: list[Pair], images: dict[str, dict], settings: ExplainSettings, layer: str
) -> Iterator[tuple[int, list[Pair], np.ndarray]]:
    """(index of the batch's first pair, the batch's pairs, their heatmaps)."""
    size = settings.batch_size
    with_metadata = uses_patient_metadata(model)
    for start in range(0, len(pairs), size):
        batch = pairs[start : start + size]
        pixels = np.stack([images[image_id]["image"] for image_id, _ in batch]).astype(np.float32)
        classes = np.array([FINDINGS.index(finding) for _, finding in batch])
        metadata = np.stack([images[image_id]["metadata"] for image_id, _ in batch]) if with_metadata else None
        yield start, batch, grad_cam(model, pixels, classes, layer, settings.method, metadata)


def localise(
    model: keras.Model, truth: dict[Pair, list[Box]], images: dict[str, dict], settings: ExplainSettings, layer: str,
    seed: int,
) -> pd.DataFrame:
    """Score every (image, finding) of truth, and a seeded random map for each
    (drawn per pair in sorted order, so the batch size changes nothing).
    Columns LOCALISATION_COLUMNS."""
    pairs = sorted(truth)
    noise = random_grids(len(pairs), feature_map_shape(model, layer), seed)
    fraction, rows = settings.heatmap_threshold, []
    for start, batch, heatmaps in heatmap_batches(model, pairs, images, settings, layer):
        random_maps = to_heatmaps(noise[start : start + len(batch)], heatmaps.shape[1:3])
        for pair, heatmap, random_map in zip(batch, heatmaps, random_maps):
            ours = score_heatmap(heatmap, truth[pair], fraction)
            chance = score_heatmap(random_map, truth[pair], fraction)
            rows.append([*pair, *(ours[c] for c in SCORE_COLUMNS), *(chance[c] for c in SCORE_COLUMNS)])
    return pd.DataFrame(rows, columns=LOCALISATION_COLUMNS)


def draw_overlay(image: np.ndarray, heatmap: np.ndarray, truth: list[Box], fraction: float) -> np.ndarray:
    """The heatmap over the image, with the detected regions' boxes, the
    ground-truth boxes and a cross at the heatmap's peak."""
    picture = overlay_heatmap(image, heatmap)
    for colour, boxes in ((DETECTED_COLOUR, detected_boxes(heatmap, fraction)), (TRUTH_COLOUR, truth)):
        for x, y, w, h in boxes:
            # Box edges are pixel boundaries; a 1-px line is drawn on the pixels just inside.
            corner0 = (int(round(x)), int(round(y)))
            corner1 = (int(round(x + w)) - 1, int(round(y + h)) - 1)
            cv2.rectangle(picture, corner0, corner1, colour, 1)
    if heatmap.max() > 0:  # an empty map has no peak to show
        row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        marker = max(5, heatmap.shape[0] // 20)
        cv2.drawMarker(picture, (int(column), int(row)), PEAK_COLOUR, cv2.MARKER_CROSS, marker, 1)
    return picture


CAPTION_LINE_PX = 14  # each caption line's height under an overlay PNG
CAPTION_MIN_WIDTH = 260  # px: room for a caption line beside a small overlay


def captioned(picture: np.ndarray, lines: list[str]) -> np.ndarray:
    """`picture` with `lines` of white text on a black band below it (widened
    with black to CAPTION_MIN_WIDTH when smaller): an overlay opened on its
    own (MLflow's artifact view, a file browser) says what it shows."""
    width = max(picture.shape[1], CAPTION_MIN_WIDTH)
    picture = np.pad(picture, ((0, 0), (0, width - picture.shape[1]), (0, 0)))
    band = np.zeros((CAPTION_LINE_PX * len(lines) + 4, width, 3), dtype=picture.dtype)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (3, CAPTION_LINE_PX * (i + 1) - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([picture, band])


def caption_lines(record: dict, method: str) -> list[str]:
    from pipeline.explain.gallery import KIND_NAMES, METHOD_NAMES

    return [f"{record['finding']}: {KIND_NAMES[record['kind']]}, {METHOD_NAMES[method]}",
            f"score {record['probability']:.3f} (threshold {record['threshold']:.3f})", str(record["image_id"])]


def explain_examples(
    model: keras.Model, examples: pd.DataFrame, images: dict[str, dict], truth: dict[Pair, list[Box]],
    settings: ExplainSettings, layer: str,
) -> list[dict]:
    """One gallery entry per example: its EXAMPLE_COLUMNS, the overlay's file
    name and PNG bytes, and its localisation scores (None without a box)."""
    records = examples.to_dict("records")
    pairs = [(r["image_id"], r["finding"]) for r in records]
    entries = []
    for start, batch, heatmaps in heatmap_batches(model, pairs, images, settings, layer):
        for record, pair, heatmap in zip(records[start:], batch, heatmaps):
            boxes = truth.get(pair, [])
            picture = draw_overlay(images[pair[0]]["image"], heatmap, boxes, settings.heatmap_threshold)
            scores = score_heatmap(heatmap, boxes, settings.heatmap_threshold) if boxes else \
                dict.fromkeys(SCORE_COLUMNS)
            entries.append({
                **record, **scores,
                "overlay": f"{pair[1]}_{Path(pair[0]).stem}.png",
                "png": cv2.imencode(".png", captioned(picture, caption_lines(record, settings.method)))[1].tobytes(),
                # The gallery page embeds every overlay: JPEG keeps it ~5x smaller.
                "jpeg": cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes(),
            })
    return entries


def examples_table(entries: list[dict]) -> pd.DataFrame:
    """The gallery as a table (examples.csv): one row per overlay, without its bytes."""
    columns = [*EXAMPLE_COLUMNS, "overlay", *SCORE_COLUMNS]
    return pd.DataFrame([{c: e[c] for c in columns} for e in entries], columns=columns)


def explain_metrics(settings: ExplainSettings, layer: str, entries: list[dict], localisation: dict) -> dict:
    """The content of metrics/explain.json."""
    kinds = [e["kind"] for e in entries]
    gallery = {"true_positives": kinds.count(TRUE_POSITIVE), "false_positives": kinds.count(FALSE_POSITIVE),
               "false_negatives": kinds.count(MISSED)}
    return {
        "method": settings.method,
        "layer": layer,
        "heatmap_threshold": settings.heatmap_threshold,
        "iobb_thresholds": list(settings.iobb_thresholds),
        "min_localisation_images": settings.min_localisation_images,
        "gallery": gallery,
        "localisation": localisation,
    }


def explain_summary(metrics: dict) -> dict:
    """metrics/explain.json: the pointing game next to the random map's (None
    without a boxed test image, or with too few); the rest goes to reports/gradcam/explain.json."""
    overall = metrics["localisation"]["overall"]
    return {"pointing_game": overall.get("pointing_game"), "pointing_random": overall.get("pointing_game_random")}


def summary_line(metrics: dict) -> str:
    """The overall localisation scores next to the random map's, for the log."""
    overall = metrics["localisation"]["overall"]
    if not overall["n"]:
        return "no test image has a ground-truth box: no localisation scores"
    if overall["pointing_game"] is None:
        return f"no localisation scores: {overall['reason']} (explain.min_localisation_images)"
    names = {"pointing_game": "pointing game"}
    names.update({iobb_key(t): f"T(IoBB)>{t:g}" for t in metrics["iobb_thresholds"]})
    scores = ", ".join(f"{name} {overall[key]:.2f} (random {overall[key + '_random']:.2f})"
                       for key, name in names.items())
    return f"{metrics['method']} on {overall['n']} boxed test image-findings: {scores}"


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    """explain_<score> over all boxed images (n too) and the gallery's counts,
    leaving out scores that are undefined (no boxed image, or too few: the
    reason is in the run's gradcam/explain.json). Each finding's scores are a row of
    localisation_table instead (90 metrics otherwise)."""
    named = {f"explain_{k}": v for k, v in metrics["localisation"]["overall"].items() if k != "reason"}
    named.update({f"explain_gallery_{k}": v for k, v in metrics["gallery"].items()})
    return {metric_name(k): float(v) for k, v in named.items() if v is not None}


LOCALISATION_TABLE = "tables/explain_by_finding.json"  # an MLflow artifact the UI shows as a table


def localisation_table(metrics: dict) -> pd.DataFrame:
    """One row per finding with boxed test images: its localisation scores (None where undefined)."""
    return pd.DataFrame([{"finding": finding, **scores}
                         for finding, scores in metrics["localisation"]["per_finding"].items()])


def explain_model(
    model_file: Path, tfrecord_dir: Path, reports_dir: Path, boxes_file: Path, out_dir: Path, run_file: Path,
    settings: ExplainSettings, experiment: str, image_size: int, fit: str, seed: int,
    mlflow_timeout_s: float | None = None, data_source: str | None = None,
) -> dict:
    """The explain stage. `settings` is params.yaml's explain section;
    reports_dir holds evaluate's test_predictions.csv and thresholds.json
    (which images are true and false positives, and which are missed). Writes out_dir (overlays,
    the gallery page, examples.csv, localisation.csv) atomically, logs it to
    the training run, and returns the metrics."""
    import json

    from pipeline.core.atomic import atomic_dir
    from pipeline.core.model_io import load_keras_model
    from pipeline.core.tracking import configure_mlflow, log_table, resume_run
    from pipeline.explain.gallery import PAGE_FILE, render_gallery_html
    from pipeline.explain.gradcam import resolve_layer
    from pipeline.explain.localisation import summarise

    # explain.layer first: a layer the model does not have stops the stage before any image is read
    model = load_keras_model(model_file)
    layer = resolve_layer(model, settings.layer)
    predictions = pd.read_csv(reports_dir / "test_predictions.csv")
    thresholds = json.loads((reports_dir / "thresholds.json").read_text())
    examples = select_examples(predictions, thresholds, settings.top_k, settings.false_positives,
                               settings.false_negatives)
    # evaluate.strata's flagged strata: their missed films, as many per group as explain.top_k
    missed_file = reports_dir / STRATA_MISSED_FILE
    groups = json.loads(missed_file.read_text()) if missed_file.exists() else []
    missed = missed_examples(groups, predictions, thresholds, settings.top_k)
    boxes = pd.read_csv(boxes_file)
    targets = localisation_targets(boxes, set(predictions["image_id"]), settings.max_localisation_images, seed)
    images = load_test_images(tfrecord_dir, set(examples["image_id"]) | set(missed["image_id"])
                              | set(targets["image_id"]))

    scores = localise(model, truth_boxes(targets, images, image_size, fit), images, settings, layer, seed)
    # A gallery image shows its box whether or not it is in the localisation sample.
    truth = truth_boxes(boxes, images, image_size, fit)
    entries = explain_examples(model, examples, images, truth, settings, layer)
    missed_entries = explain_examples(model, missed, images, truth, settings, layer) if len(missed) else []
    localisation = summarise(scores, settings.iobb_thresholds, settings.min_localisation_images)
    metrics = explain_metrics(settings, layer, entries, localisation)
    metrics["missed"] = missed_counts(predictions, thresholds)
    metrics["data_source"] = data_source  # the page's synthetic banner
    if groups:
        metrics["gallery"]["strata_missed"] = len(missed_entries)
    with atomic_dir(out_dir) as staging:
        for entry in entries + missed_entries:
            (staging / entry["overlay"]).write_bytes(entry["png"])
        (staging / PAGE_FILE).write_text(render_gallery_html(entries, metrics, groups, missed_entries),
                                         encoding="utf-8")
        examples_table(entries + missed_entries).to_csv(staging / "examples.csv", index=False, lineterminator="\n")
        scores.to_csv(staging / "localisation.csv", index=False, lineterminator="\n")

    mlflow = configure_mlflow(experiment, mlflow_timeout_s)
    with resume_run(mlflow, run_file):
        mlflow.log_metrics(mlflow_metrics(metrics))
        log_table(mlflow, localisation_table(metrics), LOCALISATION_TABLE)
        mlflow.set_tags({"explain_method": settings.method, "explain_layer": layer})
        mlflow.log_artifacts(str(out_dir), artifact_path="gradcam")
    return metrics
