"""Benchmark: batched Grad-CAM against one image at a time, and against plain prediction.

The default model (DenseNet121, 320px, from scratch: weights do not change
the cost) on real NIH PNGs from ../shared (random images when absent),
measured side by side in one run:
  (a) the usual hand-rolled Grad-CAM, one image at a time (the Keras
      example's make_gradcam_heatmap, as CheXNet repositories copy it: a
      gradient sub-model built and run eagerly per call);
  (a') our grad_cam called once per image;
  (b) our grad_cam called once per batch of --batch images;
  (c) model.predict_on_batch on the same batches: prediction alone.
Target: (b) >= 5 x faster per image than (a). Prints the numbers and writes
them into RESULTS.md (its bench_gradcam section).

    .venv/bin/python benchmarks/bench_gradcam.py [--images 32] [--batch 16]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import add_output_arguments, report, timed

IMAGES = PROJECT_ROOT.parent / "shared" / "data" / "nih-subset" / "images_001" / "images"
SECTION = "bench_gradcam"


def load_images(n: int, size: int) -> tuple[np.ndarray, str]:
    from pipeline.records.imaging import load_xray

    files = sorted(IMAGES.glob("*.png"))[:n]
    if len(files) == n:
        return np.stack([load_xray(f, size) for f in files])[..., None].astype(np.float32), "real NIH PNGs"
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, size, size, 1)).astype(np.float32), "random images (../shared absent)"


def hand_rolled_gradcam(model, image: np.ndarray, layer_name: str, class_index: int) -> np.ndarray:
    """keras.io's Grad-CAM example (make_gradcam_heatmap), upsampled to the image."""
    import cv2
    import keras
    import tensorflow as tf

    grad_model = keras.Model(model.inputs, [model.get_layer(layer_name).output, model.output])
    with tf.GradientTape() as tape:
        features, predictions = grad_model(image[None])
        score = predictions[:, class_index]
    pooled = tf.reduce_mean(tape.gradient(score, features), axis=(0, 1, 2))
    heatmap = tf.squeeze(features[0] @ pooled[..., None])
    heatmap = (tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)).numpy()
    return cv2.resize(heatmap, image.shape[:2][::-1], interpolation=cv2.INTER_LINEAR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--size", type=int, default=320)
    add_output_arguments(parser)
    args = parser.parse_args()

    from pipeline.explain.gradcam import grad_cam, last_feature_map_layer
    from pipeline.model.architectures import build_model

    images, source = load_images(args.images, args.size)
    classes = np.arange(args.images) % 14
    model = build_model(args.backbone, args.size, "none")
    layer = last_feature_map_layer(model)
    hand_rolled_gradcam(model, images[0], layer, 0)  # warm-up: thread pools, graph building
    grad_cam(model, images[:1], classes[:1])
    grad_cam(model, images[: args.batch], classes[: args.batch])
    model.predict_on_batch(images[: args.batch])

    _, naive_s = timed(lambda: [hand_rolled_gradcam(model, images[i], layer, int(classes[i]))
                                for i in range(args.images)])
    single, single_s = timed(lambda: [grad_cam(model, images[i : i + 1], classes[i : i + 1])[0]
                                      for i in range(args.images)])
    starts = range(0, args.images, args.batch)
    batched, batched_s = timed(lambda: np.concatenate(
        [grad_cam(model, images[s : s + args.batch], classes[s : s + args.batch]) for s in starts]))
    _, predict_s = timed(lambda: [model.predict_on_batch(images[s : s + args.batch]) for s in starts])
    agree = float(np.max(np.abs(np.stack(single) - batched)))

    per = {name: seconds / args.images * 1000 for name, seconds in
           (("naive", naive_s), ("single", single_s), ("batched", batched_s), ("predict", predict_s))}
    speedup = per["naive"] / per["batched"]
    lines = [
        f"{args.backbone} at {args.size}px, {args.images} {source}, batch {args.batch}",
        f"(a) hand-rolled Grad-CAM (keras.io example), one image at a time: {per['naive']:.0f} ms per image",
        f"(a') our grad_cam, one image at a time: {per['single']:.0f} ms per image",
        f"(b) our grad_cam, batched: {per['batched']:.0f} ms per image = {speedup:.1f} x faster than (a), "
        f"{per['single'] / per['batched']:.1f} x faster than (a')",
        f"(c) prediction alone, batched: {per['predict']:.0f} ms per image; "
        f"batched Grad-CAM costs {per['batched'] / per['predict']:.1f} x a prediction",
        f"largest difference between (a') and (b) heatmaps: {agree:.2e}",
        f"target (b) >= 5 x (a): {'meets' if speedup >= 5 else 'MISSES'}",
    ]
    report(args, SECTION, "bench_gradcam: batched Grad-CAM on the CPU", lines)


if __name__ == "__main__":
    main()
