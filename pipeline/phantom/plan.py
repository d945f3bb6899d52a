"""The phantom's label plan: which patient, follow-up, view and findings each film gets.

Nothing is drawn here. `plan_films` decides every row of Data_Entry_2017.csv
from ``SeedSequence(seed, spawn_key=(0,))``, with NIH ChestX-ray14's finding
ordering, a prevalence floor so that rare findings still turn up, patients
with one to five films, and findings that often persist between follow-ups.

`in_subgroup` names the one fixed slice in which ingest.phantom.subgroup_gap
(render.py) draws every finding fainter: women under 40 on the film's own
row of Data_Entry_2017.csv. With NIH's age and sex mix it holds ~11-15% of
films and patients (NIH's own share is about the same).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.labels import FINDINGS

# Share of NIH ChestX-ray14 images carrying each finding (release notes).
# Only the ordering and rough ratios matter here.
NIH_PREVALENCE: dict[str, float] = {
    "Infiltration": 0.177, "Effusion": 0.119, "Atelectasis": 0.103,
    "Nodule": 0.056, "Mass": 0.052, "Pneumothorax": 0.047,
    "Consolidation": 0.042, "Pleural_Thickening": 0.030, "Cardiomegaly": 0.025,
    "Emphysema": 0.022, "Edema": 0.021, "Fibrosis": 0.015,
    "Pneumonia": 0.013, "Hernia": 0.002,
}
NO_FINDING_RATE = 0.40
# A floor keeps even Hernia common enough that a test split of a few hundred
# images has positives for every finding, which AUC needs.
PREVALENCE_FLOOR = 0.06
MEAN_FINDINGS_PER_ABNORMAL = 2.0
IMAGES_PER_PATIENT_P = (0.35, 0.25, 0.18, 0.12, 0.10)  # 1..5 films
PERSIST_P = 0.5  # chance a follow-up repeats the previous film's findings
AP_P_NORMAL, AP_P_ABNORMAL = 0.33, 0.45  # sicker patients get bedside films
# The slice a non-zero subgroup_gap fades findings in. Fixed, not a parameter,
# so that a slice report knows where to look: Patient Gender F, Patient Age < 40.
SUBGROUP_SEX, SUBGROUP_AGE_BELOW = "F", 40


@dataclass(frozen=True)
class FilmRecord:
    """One row of Data_Entry_2017.csv, before rendering."""
    index: int
    patient_id: int
    follow_up: int
    age: int
    sex: str
    view: str
    findings: tuple[str, ...]

    @property
    def image_id(self) -> str:
        return f"{self.patient_id:08d}_{self.follow_up:03d}.png"


def in_subgroup(record: FilmRecord) -> bool:
    """Is this film in the slice whose findings subgroup_gap fades (women under 40)?
    Age is the film's own: a patient can leave the slice at a later follow-up."""
    return record.sex == SUBGROUP_SEX and record.age < SUBGROUP_AGE_BELOW


def target_prevalence() -> dict[str, float]:
    """Per-finding share of all images: the floor plus NIH-proportional rest."""
    budget = (1.0 - NO_FINDING_RATE) * MEAN_FINDINGS_PER_ABNORMAL
    spare = budget - PREVALENCE_FLOOR * len(FINDINGS)
    total = sum(NIH_PREVALENCE.values())
    return {finding: PREVALENCE_FLOOR + spare * NIH_PREVALENCE[finding] / total for finding in FINDINGS}


def _abnormal_inclusion_p() -> np.ndarray:
    """Bernoulli rates that, after rejecting empty draws, hit target_prevalence.

    Conditioning on "at least one finding" inflates each rate by
    1/P(non-empty); solve for the scale that undoes it.
    """
    prevalence = target_prevalence()
    rates = np.array([prevalence[finding] for finding in FINDINGS]) / (1.0 - NO_FINDING_RATE)
    scale = 1.0
    for _ in range(200):
        scale = 1.0 - float(np.prod(1.0 - np.clip(scale * rates, 0.0, 1.0)))
    return np.clip(scale * rates, 0.0, 1.0)


_INCLUSION_P = _abnormal_inclusion_p()


def sample_findings(rng: np.random.Generator) -> tuple[str, ...]:
    if rng.random() < NO_FINDING_RATE:
        return ()
    while True:
        hit = rng.random(len(FINDINGS)) < _INCLUSION_P
        if hit.any():
            return tuple(finding for finding, present in zip(FINDINGS, hit) if present)


def sample_base_age(rng: np.random.Generator) -> int:
    # NIH: mean ~47, sd ~17, a thin paediatric tail.
    if rng.random() < 0.03:
        return int(rng.integers(1, 18))
    return int(np.clip(round(rng.normal(47.5, 16.5)), 1, 95))


def plan_films(n_images: int, seed: int) -> list[FilmRecord]:
    """Assign patients, follow-ups, demographics, views and findings."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    records: list[FilmRecord] = []
    patient_id = 0
    while len(records) < n_images:
        patient_id += 1
        n_films = min(1 + int(rng.choice(5, p=IMAGES_PER_PATIENT_P)), n_images - len(records))
        sex = "M" if rng.random() < 0.56 else "F"
        age = sample_base_age(rng)
        findings: tuple[str, ...] = ()
        for follow_up in range(n_films):
            if follow_up == 0 or rng.random() >= PERSIST_P:
                findings = sample_findings(rng)
            if follow_up:
                age = min(95, age + int(rng.integers(0, 2)))
            ap_p = AP_P_ABNORMAL if findings else AP_P_NORMAL
            view = "AP" if rng.random() < ap_p else "PA"
            records.append(FilmRecord(len(records), patient_id, follow_up, age, sex, view, findings))
    return records
