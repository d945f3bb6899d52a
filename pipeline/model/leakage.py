"""Which patients a registered model learned from, so that it is never
compared on them.

A champion is re-scored on today's test split. If the split changed since it
was trained (another split method, ratios or seed, or a grown data set under
`random`), some of today's test patients may be ones it trained or tuned its
thresholds on, and the comparison would favour it without a word. Each
version's run therefore carries FINGERPRINT_FILE: the hashed ids of its train
and val patients (a hash, so that the artifact names no patient). The
champion decision counts today's test patients in the champion's
fingerprint and compares the two models on the films of the patients neither
model saw.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

FINGERPRINT_FILE = "training_patients.json"
HASH = "sha256 of the patient id as text, first 16 hex digits"


def patient_hash(patient_id) -> str:
    return hashlib.sha256(str(patient_id).encode()).hexdigest()[:16]


def fingerprint(train_patients: Iterable, val_patients: Iterable) -> dict:
    """The artifact's content: {"hash", "train": [hashes], "val": [hashes]}, sorted."""
    return {"hash": HASH, "train": sorted({patient_hash(p) for p in train_patients}),
            "val": sorted({patient_hash(p) for p in val_patients})}


def seen_hashes(record: dict) -> set[str]:
    """Every patient a fingerprint's model trained or chose thresholds on."""
    return set(record.get("train", [])) | set(record.get("val", []))


def load_fingerprint(tracking_uri: str, run_id: str) -> dict | None:
    """A run's fingerprint, or None when the run has none (registered before fingerprints)."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=FINGERPRINT_FILE,
                                                       dst_path=folder, tracking_uri=tracking_uri)
        except (OSError, mlflow.exceptions.MlflowException):
            return None
        return json.loads(Path(path).read_text())


def unseen_films(test_patients: Iterable, seen: set[str]) -> tuple[list[bool], dict]:
    """(a keep-mask over the test films: True where the film's patient is not in
    `seen`; the counts a decision states: test_patients, champion_seen_patients,
    champion_seen_images, compared_patients, compared_images)."""
    patients = list(test_patients)
    keep = [patient_hash(p) not in seen for p in patients]
    seen_ids = {p for p, kept in zip(patients, keep) if not kept}
    total = len(set(patients))
    return keep, {"test_patients": total, "champion_seen_patients": len(seen_ids),
                  "champion_seen_images": keep.count(False), "compared_patients": total - len(seen_ids),
                  "compared_images": keep.count(True)}
