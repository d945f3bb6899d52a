"""Explain: Grad-CAM overlays for test images, and how often they point at the box."""
from __future__ import annotations

from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd

from pipeline.dataset import decode_record, shard_files
from pipeline.gradcam import grad_cam, overlay_heatmap, peak_in_box
from pipeline.labels import FINDINGS

BOX_COLUMNS = ["image_id", "finding", "x", "y", "w", "h"]


def select_examples(predictions: pd.DataFrame, per_finding: int) -> pd.DataFrame:
    """For each finding, the test images that are positive with the highest scores
    (true positives first): rows of (image_id, finding, probability)."""
    chosen = []
    for finding in FINDINGS:
        positives = predictions[predictions[f"label_{finding}"] == 1]
        top = positives.nlargest(per_finding, f"prob_{finding}")
        for image_id, prob in zip(top["image_id"], top[f"prob_{finding}"]):
            chosen.append({"image_id": image_id, "finding": finding, "probability": float(prob)})
    return pd.DataFrame(chosen, columns=["image_id", "finding", "probability"])


def load_test_images(tfrecord_dir: Path, image_ids: set[str]) -> dict[str, dict]:
    """The wanted test images and their original (width, height), from the shards."""
    import tensorflow as tf

    found: dict[str, dict] = {}
    for record in tf.data.TFRecordDataset(shard_files(tfrecord_dir, "test")).map(decode_record):
        key = record["image_id"].numpy().decode()
        if key in image_ids:
            size = (int(record["orig_width"]), int(record["orig_height"]))
            found[key] = {"image": record["image"].numpy().astype(np.float32), "orig_size": size}
    return found


def box_to_model_coordinates(box, orig_size: tuple[int, int], image_size: int, fit: str):
    """Map an (x, y, w, h) box on the original image onto the square model input."""
    width, height = orig_size
    x, y, w, h = box
    side = min(width, height) if fit == "crop" else max(width, height)
    scale = image_size / side
    offset_x, offset_y = (width - side) / 2, (height - side) / 2
    return ((x - offset_x) * scale, (y - offset_y) * scale, w * scale, h * scale)


def explain_examples(
    model: keras.Model,
    examples: pd.DataFrame,
    images: dict[str, dict],
    boxes: pd.DataFrame,
    image_size: int,
    fit: str,
    out_dir: Path,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Write one overlay PNG per example; return a table with the pointing-game result
    where a box exists (hit), and the chance a random pixel falls in the box."""
    rows = []
    examples = examples[examples["image_id"].isin(images.keys())].reset_index(drop=True)
    for start in range(0, len(examples), batch_size):
        batch = examples.iloc[start : start + batch_size]
        pixels = np.stack([images[i]["image"] for i in batch["image_id"]])
        classes = np.array([FINDINGS.index(f) for f in batch["finding"]])
        heatmaps = grad_cam(model, pixels, classes)
        for (_, example), image, heatmap in zip(batch.iterrows(), pixels, heatmaps):
            picture = overlay_heatmap(image, heatmap)
            match = boxes[(boxes["image_id"] == example["image_id"]) & (boxes["finding"] == example["finding"])]
            hit, chance = None, None
            if len(match):
                box = box_to_model_coordinates(
                    match.iloc[0][["x", "y", "w", "h"]].astype(float).tolist(),
                    images[example["image_id"]]["orig_size"], image_size, fit,
                )
                hit = peak_in_box(heatmap, box)
                chance = _box_area_fraction(box, image_size)
                x, y, w, h = (int(round(v)) for v in box)
                cv2.rectangle(picture, (x, y), (x + w, y + h), (0, 255, 0), 1)
            name = f"{example['finding']}_{Path(example['image_id']).stem}.png"
            cv2.imwrite(str(out_dir / name), picture)
            rows.append({**example.to_dict(), "overlay": name, "pointing_hit": hit, "random_hit_chance": chance})
    return pd.DataFrame(rows)


def _box_area_fraction(box, image_size: int) -> float:
    """Probability that a uniformly random peak lands in the (clipped) box."""
    x, y, w, h = box
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(image_size), x + w), min(float(image_size), y + h)
    return max(0.0, x1 - x0) * max(0.0, y1 - y0) / float(image_size * image_size)


def pointing_summary(results: pd.DataFrame) -> dict:
    """Pointing-game hit rate over examples with a box, next to a random map's."""
    scored = results[results["pointing_hit"].notna()] if len(results) else results
    summary = {"explained_images": int(len(results)), "with_box": int(len(scored))}
    if len(scored):
        summary["pointing_game"] = float(scored["pointing_hit"].astype(bool).mean())
        summary["pointing_game_random"] = float(scored["random_hit_chance"].mean())
    return summary
