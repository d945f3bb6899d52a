"""The MLflow model registry: every evaluated model becomes a version of `chestxray`.

Each new version gets the alias `challenger`; it takes `champion` only if it
beats the current champion on the same test set (champion_decision).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from importlib.metadata import version as package_version
from pathlib import Path

import keras

from pipeline.core.labels import FINDINGS
from pipeline.core.model_io import KERAS_ARTIFACT

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_MAX_CLASS_DROP = 0.02
# What a registered model needs at serving time, pinned like the project.
SERVING_PACKAGES = ("mlflow", "tensorflow-cpu", "keras", "numpy", "pandas", "opencv-python-headless")
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# What travels with a registered model, so that its pyfunc loads without the
# project installed: the label order, patient-metadata encoding, the model's
# input contract, image decoding (to preprocess a film the way training did)
# and the pyfunc itself. Not ingest, validation, training or the phantom.
SERVING_MODULES = (
    "__init__.py",
    "core/__init__.py", "core/labels.py", "core/patient.py", "core/model_io.py",
    "records/__init__.py", "records/imaging.py",
    "serve/__init__.py", "serve/pyfunc.py",
)


def serving_requirements() -> list[str]:
    # Given explicitly: MLflow's inference would load the model in a subprocess.
    return [f"{name}=={package_version(name)}" for name in SERVING_PACKAGES]


def serving_package(folder: Path) -> Path:
    """A copy of the SERVING_MODULES of this package under folder/pipeline."""
    target = folder / "pipeline"
    for module in SERVING_MODULES:
        (target / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACKAGE_DIR / module, target / module)
    return target


def registry_model_metadata(
    thresholds: dict[str, float], preprocessing: dict, metrics: dict, test_manifest: str | None = None
) -> dict:
    """What makes a registered model self-describing: label order, operating
    thresholds, the preprocessing it expects, and the scores and test set that
    the champion rule compares."""
    return {
        "findings": list(FINDINGS),
        "thresholds": {f: float(thresholds[f]) for f in FINDINGS},
        "preprocessing": preprocessing,
        "mean_auc": metrics.get("mean_auc"),
        "auc": metrics.get("auc", {}),
        "test_manifest": test_manifest,
    }


def champion_decision(challenger: dict, champion: dict | None, max_class_drop: float) -> tuple[bool, list[str]]:
    """Whether the challenger takes the champion alias, and why (plain sentences).

    Both are {"version", "mean_auc", "auc": {finding: auc or None}, "test_manifest"}.
    AUCs compare only on the same test manifest; then the challenger needs a
    mean AUC not lower and no finding's AUC lower by more than max_class_drop.
    """
    if champion is None:
        return True, ["first version of the registered model: no champion to beat"]
    if not challenger.get("test_manifest") or challenger.get("test_manifest") != champion.get("test_manifest"):
        return False, [
            f"champion version {champion['version']} was evaluated on a different test manifest "
            f"({champion.get('test_manifest') or 'unknown'}, "
            f"this model {challenger.get('test_manifest') or 'unknown'}): "
            "AUCs are not comparable"
        ]
    reasons = []
    ours, theirs = challenger.get("mean_auc"), champion.get("mean_auc")
    if ours is None or (theirs is not None and ours < theirs):
        reasons.append(f"mean AUC {_fmt(ours)} is lower than champion version {champion['version']}'s {_fmt(theirs)}")
    for finding in FINDINGS:
        mine, best = challenger["auc"].get(finding), champion.get("auc", {}).get(finding)
        if mine is not None and best is not None and best - mine > max_class_drop:
            reasons.append(f"{finding} AUC drops by {best - mine:.4f} ({_fmt(best)} -> {_fmt(mine)}), "
                           f"more than max_class_drop {max_class_drop}")
    if reasons:
        return False, reasons
    return True, [f"mean AUC {_fmt(ours)} >= champion version {champion['version']}'s {_fmt(theirs)} and no "
                  f"finding's AUC drops by more than {max_class_drop}"]


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def version_record(version) -> dict:
    """A registered version's scores and test set, from its tags (None where untagged)."""
    tags = version.tags or {}
    mean_auc = tags.get("mean_auc")
    return {
        "version": int(version.version),
        "mean_auc": float(mean_auc) if mean_auc not in (None, "None") else None,
        "auc": json.loads(tags["auc"]) if "auc" in tags else {},
        "test_manifest": tags.get("test_manifest") if tags.get("test_manifest") != "None" else None,
    }


def current_champion(client, registered_name: str) -> dict | None:
    registered = client.get_registered_model(registered_name)
    if CHAMPION not in (registered.aliases or {}):
        return None
    return version_record(client.get_model_version_by_alias(registered_name, CHAMPION))


def register_model(
    mlflow,
    model: keras.Model,
    registered_name: str,
    metadata: dict,
    tags: dict[str, str],
    max_class_drop: float = DEFAULT_MAX_CLASS_DROP,
) -> dict:
    """Log `model` to the active run as a pyfunc with named outputs
    (pipeline.serve.pyfunc), register it as a new version tagged with
    its scores, test manifest and `tags`, give it the challenger alias, and the
    champion alias if champion_decision says so. The decision is tagged on the
    version and the run.

    Returns {"version", "champion": bool, "reasons": [...], "previous_champion": record or None}.
    """
    from pipeline.serve.pyfunc import ChestXrayPyfunc  # MLflow warns once, when the class is defined

    with tempfile.TemporaryDirectory(prefix="cxr-register-") as folder:
        keras_file = Path(folder) / "model.keras"
        model.save(keras_file)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ChestXrayPyfunc(),
            artifacts={KERAS_ARTIFACT: str(keras_file)},
            code_paths=[str(serving_package(Path(folder)))],
            registered_model_name=registered_name,
            pip_requirements=serving_requirements(),
            metadata=metadata,
            await_registration_for=60,
        )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    record = {"version": version, "mean_auc": metadata.get("mean_auc"), "auc": metadata.get("auc", {}),
              "test_manifest": metadata.get("test_manifest")}
    previous = current_champion(client, registered_name)
    promoted, reasons = champion_decision(record, previous, max_class_drop)
    version_tags = {
        **tags,
        "mean_auc": f"{record['mean_auc']}",
        "auc": json.dumps(record["auc"]),
        "test_manifest": f"{record['test_manifest']}",
        "thresholds": json.dumps(metadata["thresholds"]),
        "champion_decision": CHAMPION if promoted else CHALLENGER,
        "champion_reasons": json.dumps(reasons),
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(registered_name, str(version), key, value)
    client.set_registered_model_alias(registered_name, CHALLENGER, str(version))
    if promoted:
        client.set_registered_model_alias(registered_name, CHAMPION, str(version))
    mlflow.set_tags({"registry_version": str(version), "champion_decision": version_tags["champion_decision"],
                     "champion_reasons": version_tags["champion_reasons"]})
    return {"version": version, "champion": promoted, "reasons": reasons, "previous_champion": previous}
