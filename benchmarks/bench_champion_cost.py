"""Benchmark: what re-scoring the champion adds to the evaluate stage.

Self-contained (it used to read the default run's store and models/): in a
temporary folder, --images real NIH PNGs from ../shared (the default run's
test split has 70; fewer here, for time) are written as 320px test shards,
two images per patient; a DenseNet121 (from scratch: weights do not change
the cost) is registered as the champion in a temporary MLflow store, as the
evaluate stage registers. Then, taking turns for --rounds rounds:
  (a) the new model's own test pass (predict_split, the evaluate stage's);
  (b) champion_decision: load the champion from the registry, its test pass
      on the same shards, the paired patient bootstrap (--resamples).
(b) / (a) is what the champion adds to the evaluate stage on a test split
this size; the load (and tracing the loaded model) is a fixed cost, so on a
large test split (b) / (a) tends to 1: one more test pass.

    .venv/bin/python benchmarks/bench_champion_cost.py [--images 40] [--rounds 3]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from common import (
    PROJECT_ROOT,
    add_output_arguments,
    contention_line,
    describe,
    interleaved,
    nih_pngs,
    report,
    summary,
    timed,
)

SECTION = "bench_champion_cost"
NAME = "chestxray-bench"
SIZE = 320


def test_shards(files: list[Path], n: int, out: Path) -> Path:
    """n test records cycling over files, two images per patient."""
    import pandas as pd

    from pipeline.core.labels import FINDINGS
    from pipeline.data.manifest import MANIFEST_COLUMNS
    from pipeline.records.preprocess import write_tfrecord_shards

    rows = []
    for k in range(n):
        labels = {f: int((k + i) % 5 == 0) for i, f in enumerate(FINDINGS)}
        rows.append({"image_id": f"{k:06d}_000.png", "path": str(files[k % len(files)]), "patient_id": k // 2,
                     "follow_up": k % 2, "age": 50, "sex": "M", "view": "PA", "finding_labels": "No Finding",
                     **labels, "split": "test"})
    out.mkdir(parents=True)
    with contextlib.redirect_stderr(io.StringIO()):  # the stage's progress lines
        index, _ = write_tfrecord_shards(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)), out, SIZE)
    (out / "index.json").write_text(json.dumps(index))
    return out


def register_champion(model, store: str, artifacts: Path) -> int:
    """The model as version 1 of NAME, with the champion alias, as the evaluate stage registers."""
    import mlflow

    from pipeline.core.labels import FINDINGS
    from pipeline.model.registry import register_model, registry_model_metadata

    mlflow.set_tracking_uri(store)
    experiment_id = mlflow.create_experiment("bench", artifact_location=artifacts.as_uri())
    metadata = registry_model_metadata({f: 0.5 for f in FINDINGS}, {"image_size": SIZE, "fit": "crop"},
                                       {"mean_auc": 0.5, "auc": {}})
    first = {"promote": True, "rule": "first", "reasons": ["benchmark"], "champion_version": None,
             "comparison": None}
    with mlflow.start_run(experiment_id=experiment_id):
        return register_model(mlflow, model, NAME, metadata, {}, first)["version"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="test records (the default run's test split: 70)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000, help="as params.yaml evaluate.promotion.resamples")
    parser.add_argument("--batch", type=int, default=8, help="as params.yaml evaluate.batch_size")
    add_output_arguments(parser)
    args = parser.parse_args()
    files = nih_pngs()
    source = "real NIH PNGs"
    if not files:
        sys.exit("bench_champion_cost: no real NIH PNGs in ../shared/data/nih-subset")

    import keras

    from pipeline.core.settings import load_settings, with_overrides
    from pipeline.model.architectures import build_model
    from pipeline.model.champion import SplitScores, champion_decision
    from pipeline.model.scoring import predict_split

    with tempfile.TemporaryDirectory(prefix="bench_champion.") as tmp:
        tmp = Path(tmp)
        shards = test_shards(files, args.images, tmp / "tfrecords")
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        keras.utils.set_random_seed(0)
        champion = build_model("densenet121", SIZE, "none")
        version, register_s = timed(register_champion, champion, store, tmp / "artifacts")
        del champion
        keras.utils.set_random_seed(1)
        model = build_model("densenet121", SIZE, "none")
        probs, labels, ids = predict_split(model, shards, "test", args.batch)  # warm-up (graph tracing)
        decisions, busy = [], {}
        settings = with_overrides(load_settings(PROJECT_ROOT / "params.yaml"), **{
            "evaluate.batch_size": args.batch, "evaluate.promotion.resamples": args.resamples}).evaluate
        challenger = SplitScores.of_split(shards, labels, probs, ids)

        def own() -> float:
            return timed(predict_split, model, shards, "test", args.batch)[1]

        def with_champion() -> float:
            decision, seconds = timed(champion_decision, NAME, store, shards, challenger, settings, seed=42)
            decisions.append(decision)
            return seconds

        rounds = interleaved({"own": own, "champion": with_champion}, args.rounds, log=SECTION, contention=busy)

    decision = decisions[-1]
    if decision.get("champion_version") != version or decision.get("comparison") is None:
        sys.exit(f"bench_champion_cost: the champion was not scored: {decision.get('rule')}: "
                 f"{decision.get('reasons')}")
    mean = {name: summary(values)["mean"] for name, values in rounds.items()}
    per_round = ", ".join(f"{c / o:.2f}" for o, c in zip(rounds["own"], rounds["champion"]))
    lines = [
        f"densenet121 at {SIZE}px, {args.images} test records ({source}, {args.images // 2 + args.images % 2} "
        f"patients), batch {args.batch}, {args.resamples} paired bootstrap resamples, {args.rounds} interleaved "
        f"rounds; seconds",
        f"(a) the new model's test pass: {describe(rounds['own'], 's', 1, 2)}",
        f"(b) champion_decision (registry load + test pass + paired bootstrap): "
        f"{describe(rounds['champion'], 's', 1, 2)}",
        f"(b) / (a) on the means: {mean['champion'] / mean['own']:.2f} x (per round {per_round}); slowest / slowest "
        f"{max(rounds['champion']) / max(rounds['own']):.2f} x",
        contention_line(busy),
        f"registering the champion (set-up, not timed above): {register_s:.1f} s; decision: {decision['rule']}",
    ]
    report(args, SECTION, "bench_champion_cost: re-scoring the champion in the evaluate stage", lines)


if __name__ == "__main__":
    main()
