"""A data source is one record (pipeline.data.sources): registering a toy one
by name makes it ingestible and validated, with no other change."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.core.config import ConfigError
from pipeline.data.readers import ingest_data_root
from pipeline.data.sources import (
    FOLDER_CONTRACT,
    SOURCES,
    DataSource,
    check_source_settings,
    is_synthetic,
    source_sentence,
)
from pipeline.data.synthetic_banner import synthetic_banner
from pipeline.data.validate import validate_manifest
from tests.conftest import write_png

SPLIT = {"method": "hash", "train": 0.5, "val": 0.25, "test": 0.25}


def read_toy(request):
    """A source whose root holds films/<patient>_<n>.png, no finding (the folder source's reader does the rest)."""
    from pipeline.data.folder import build_folder_manifest

    films = sorted((request.root / "films").glob("*.png"))
    labels = request.root / "toy_labels.csv"
    pd.DataFrame({"path": [f"films/{f.name}" for f in films], "labels": "No Finding",
                  "patient_id": [int(f.stem.split("_")[0]) for f in films]}).to_csv(labels, index=False)
    return build_folder_manifest(request.root, labels, request.split, request.seed)


@pytest.fixture
def toy_source(monkeypatch):
    record = DataSource("toy", "a test's toy films", read_toy, FOLDER_CONTRACT)
    monkeypatch.setitem(SOURCES, record.name, record)  # what sources.register does, undone after the test
    return record


def test_a_toy_source_registered_by_name_ingests_and_validates(toy_source, tmp_path):
    import numpy as np

    for patient in range(1, 9):
        for n in range(2):
            write_png(tmp_path / "films" / f"{patient}_{n}.png", np.full((48, 48), 40 * n + patient, np.uint8))
    manifest, boxes, rejected, report = ingest_data_root("toy", tmp_path, SPLIT, seed=0)
    assert len(manifest) == 16 and manifest["patient_id"].nunique() == 8 and not rejected
    assert report["source"] == "toy" and boxes.empty
    result = validate_manifest(manifest.astype({"age": "Int64"}), source="toy", min_split_patients=1)
    assert result.success, [check for check in result.failed]
    assert check_source_settings("toy", tmp_path, tmp_path / "elsewhere") is toy_source
    assert source_sentence("toy") == "Data: a test's toy films (ingest.source toy)." and not is_synthetic("toy")


def test_an_unknown_source_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"ingest.source is 'dicom-server'; allowed: one of phantom \| nih \| "
                                          r"kaggle-sample \| folder$"):
        check_source_settings("dicom-server", "data", "data/ingest/phantom")
    assert is_synthetic("phantom") and "Synthetic phantom" in source_sentence("phantom")


def test_every_page_warns_of_synthetic_films_in_the_same_banner_and_of_real_ones_not_at_all():
    assert synthetic_banner("phantom", "The reference films are", " <Drawn>.") == (
        '<p class="banner" id="synthetic">The reference films are a synthetic phantom: these figures say nothing '
        'about clinical performance. &lt;Drawn&gt;.</p>')
    assert synthetic_banner("nih") == synthetic_banner("folder") == synthetic_banner(None) == ""
