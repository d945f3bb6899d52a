"""Typed settings (pipeline.core.settings): params.yaml is read once at a
stage's start and every value checked, so a bad one stops the stage in one
line that names it, before any data is read or any library loads."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest
import yaml

from pipeline.core.config import ConfigError
from pipeline.core.settings import SECTIONS, Settings, load_settings, settings_from
from tests.conftest import PROJECT_ROOT, project_settings

# (stage that owns it, dotted param, bad value, what the error line says after "<param> is ...")
BAD_PARAMS = [
    ("train", "train.epochs", 0, "allowed: a whole number >= 1"),
    ("train", "train.epochs", -1, "allowed: a whole number >= 1"),
    ("train", "train.batch_size", 0, "allowed: a whole number >= 1"),
    ("train", "train.learning_rate", -1, "allowed: a number in (0, 10]"),
    ("train", "train.batchnorm_momentum", 5, "allowed: a number in [0, 1)"),
    ("train", "train.backbone", "resnet99", "allowed: one of densenet121 | resnet50"),
    ("train", "train.lr_schedule", "step", "allowed: one of cosine | constant"),
    ("train", "train.weights", "missing.weights.h5", "no such file"),
    ("train", "train.augment.rotation", "a lot", "allowed: a number in [0, 180]"),
    ("preprocess", "preprocess.image_size", 0, "allowed: a whole number from 8 to 4096"),
    ("preprocess", "preprocess.image_size", 7, "allowed: a whole number from 8 to 4096"),
    ("preprocess", "preprocess.jpeg_quality", 500, "allowed: a whole number from 1 to 100"),
    ("preprocess", "preprocess.fit", "stretch", "allowed: one of crop | pad"),
    ("evaluate", "evaluate.batch_size", 0, "allowed: a whole number >= 1"),
    ("evaluate", "evaluate.target_sensitivity", 2, "allowed: a number in (0, 1]"),
    ("evaluate", "evaluate.target_sensitivity", -0.5, "allowed: a number in (0, 1]"),
    ("evaluate", "evaluate.bootstrap", 0, "allowed: a whole number >= 1"),
    ("evaluate", "evaluate.calibration", "temperature", "allowed: one of none | platt | isotonic"),
    ("evaluate", "evaluate.promotion.margin", -0.1, "allowed: a number in [0, 1]"),
    ("explain", "explain.heatmap_threshold", 0, "allowed: a number in (0, 1]"),
    ("explain", "explain.iobb_thresholds", [0.1, 1.5], "allowed: a number in [0, 1)"),
    ("ingest", "seed", "abc", "allowed: a whole number >= 0"),
    ("ingest", "ingest.source", "dicom-server", "allowed: one of phantom | nih | kaggle-sample | folder"),
    ("validate", "validate.on_invalid", "ignore", "allowed: one of fail | drop"),
    ("ingest", "ingest.root", "elsewhere", "but must be data/ingest/phantom (paths.phantom) when ingest.source is"),
    ("train", "mlflow.timeout_s", 0, "allowed: a number in (0, inf)"),
]
# The most a stage may take from its start to its one-line refusal (the
# issue's bound; it takes well under a second: no TensorFlow, pandas or data).
REFUSED_WITHIN_S = 10


def with_param(params: dict, dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[leaf] = value
    return params


def project_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def test_the_project_params_are_valid_and_every_field_comes_from_them():
    settings = load_settings(PROJECT_ROOT / "params.yaml")
    assert settings.train.backbone == "densenet121" and settings.train.lr_schedule == "cosine"
    assert settings.evaluate.promotion.margin == 0.02 and settings.preprocess.image_size == 320
    # no field has a default of its own that could disagree with params.yaml
    for cls in (Settings, *SECTIONS.values()):
        for spec in dataclasses.fields(cls):
            assert spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING, spec.name


@pytest.mark.parametrize(("stage", "param", "value", "allowed"), BAD_PARAMS,
                         ids=[f"{param}={value}" for _, param, value, _ in BAD_PARAMS])
def test_a_bad_param_stops_its_stage_in_one_line_before_any_work(tmp_path, stage, param, value, allowed):
    params = with_param(project_params(), param, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / f"{stage}.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{stage}: error: params.yaml: {param} is "), lines[0]
    assert allowed in lines[0], lines[0]
    assert elapsed < REFUSED_WITHIN_S, f"{stage} took {elapsed:.1f} s to refuse {param}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing read, nothing written


def test_an_image_size_the_backbone_cannot_take_stops_preprocess_not_train(tmp_path):
    params = with_param(with_param(project_params(), "train.backbone", "alexnet"), "preprocess.image_size", 16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "src" / "preprocess.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == ("preprocess: error: params.yaml: preprocess.image_size is 16; allowed: at least "
                                     "32 px for train.backbone alexnet")


@pytest.mark.parametrize(("changes", "message"), [
    ({"ingest.split.train": 0.7, "ingest.split.val": 0.7, "ingest.split.test": 0.7},
     "ingest.split.train + val + test is 2.1 (0.7 + 0.7 + 0.7); allowed: ratios that sum to 1"),
    ({"train.epoch": 3}, "train.epoch is not a param; train has backbone, weights, epochs"),
    ({"explain.layer": 3}, "explain.layer is 3; allowed: a non-empty string (empty = the model's last 4-D layer)"),
    ({"train.use_metadata": "yes"}, "train.use_metadata is 'yes'; allowed: true or false"),
    ({"train.deterministic": 1}, "train.deterministic is 1; allowed: one of auto | true | false"),
])
def test_values_that_only_fail_together_or_by_type_are_named(changes, message):
    with pytest.raises(ConfigError, match="^params.yaml: ") as raised:
        project_settings(**changes)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_missing_param_or_section_is_named():
    params = project_params()
    del params["evaluate"]["promotion"]["resamples"]
    with pytest.raises(ConfigError, match=r"^params.yaml: evaluate.promotion.resamples is missing$"):
        settings_from(params)
    params = project_params()
    del params["explain"]
    with pytest.raises(ConfigError, match=r"^params.yaml: explain is missing$"):
        settings_from(params)


def test_values_keep_their_yaml_types():
    settings = project_settings(**{"train.deterministic": True, "explain.layer": None})
    assert settings.train.deterministic is True and settings.explain.layer is None
    assert settings.train.epochs == 4 and isinstance(settings.train.epochs, int)
    assert settings.logged("train")["train"]["epochs"] == 4  # what MLflow records: params.yaml as written
