"""The MLflow model registry: every evaluated model becomes a version of `chestxray`."""
from __future__ import annotations

import json
from importlib.metadata import version as package_version

import keras

from pipeline.labels import FINDINGS

CHAMPION = "champion"
# What a registered model needs at serving time, pinned like the project.
SERVING_PACKAGES = ("tensorflow-cpu", "keras", "numpy", "opencv-python-headless")


def serving_requirements() -> list[str]:
    # Given explicitly: MLflow's inference would load the model in a subprocess.
    return [f"{name}=={package_version(name)}" for name in SERVING_PACKAGES]


def model_card_metadata(thresholds: dict[str, float], preprocessing: dict, metrics: dict) -> dict:
    """What makes a registered model self-describing: label order, operating
    thresholds and the preprocessing it expects."""
    return {
        "findings": list(FINDINGS),
        "thresholds": {f: float(thresholds[f]) for f in FINDINGS},
        "preprocessing": preprocessing,
        "mean_auc": metrics.get("mean_auc"),
    }


def register_model(
    mlflow,
    model: keras.Model,
    registered_name: str,
    metadata: dict,
    tags: dict[str, str],
) -> int:
    """Log `model` to the active run, register it, tag the version, and give it
    the champion alias if the registered model has no champion yet.

    Returns the new version number.
    """
    info = mlflow.keras.log_model(
        model,
        name="model",
        registered_model_name=registered_name,
        pip_requirements=serving_requirements(),
        metadata=metadata,
        await_registration_for=60,
    )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, str(version), key, value)
    client.set_model_version_tag(registered_name, str(version), "thresholds", json.dumps(metadata["thresholds"]))
    registered = client.get_registered_model(registered_name)
    if CHAMPION not in (registered.aliases or {}):
        client.set_registered_model_alias(registered_name, CHAMPION, str(version))
    return version
