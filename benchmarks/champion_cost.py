"""Cost of scoring the champion in the evaluate stage.

Run after `make run`, from the project root. It reads the default run's store
and shards and registers nothing: it times the new model's own test pass
against evaluate's champion_decision (load the champion, one test pass, the
paired bootstrap), twice.
"""
import os
import time
from pathlib import Path

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

from pipeline.core.model_io import load_keras_model
from pipeline.model.evaluate import champion_decision, predict_split

SHARDS = Path("data/tfrecords")
STORE = "sqlite:///mlruns/mlflow.db"

model = load_keras_model("models/model.keras")
predict_split(model, SHARDS, "test", 8)  # warm-up (graph tracing)
for _ in range(2):
    started = time.perf_counter()
    probs, labels, ids = predict_split(model, SHARDS, "test", 8)
    own = time.perf_counter() - started
    started = time.perf_counter()
    decision = champion_decision("chestxray", STORE, SHARDS, 8, labels, probs, ids, {"resamples": 1000}, seed=42)
    champion = time.perf_counter() - started
    print(f"test pass of the new model {own:.1f} s; champion load + test pass + paired bootstrap {champion:.1f} s; "
          f"ratio {champion / own:.2f}")
print(decision["rule"])
