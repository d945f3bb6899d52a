"""Typed settings: one checked object per params.yaml section.

`load_settings()` reads params.yaml once, at a stage's start, and checks every
value before any expensive work: a bad one stops the stage in one line naming
the param, what it is and what is allowed. params.yaml is the only source of
values (no field has a default), and the allowed values of each choice are
declared here, where the stages' code imports them from.

Checks that need a registry of another package (the backbone's smallest
input, a data source's name and root) live with that registry and are run at
the start of the stage scripts that depend on them (pipeline.model.backbones,
pipeline.data.sources).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from pipeline.core.config import PARAMS_FILE, ConfigError, load_params
from pipeline.core.labels import FINDINGS

# The allowed values of every choice param, the one place they are spelled.
SPLIT_METHODS = ("hash", "random", "official")
ON_INVALID = ("fail", "drop")
FITS = ("crop", "pad")
ENCODINGS = ("png", "jpeg")
LOSSES = ("weighted_bce", "focal")
LR_SCHEDULES = ("cosine", "constant")
AUTO_FLAGS = ("auto", True, False)
THRESHOLD_METHODS = ("youden", "max_f1", "sensitivity")
RECALIBRATION_METHODS = ("none", "platt", "isotonic")
GRADCAM_METHODS = ("gradcam", "gradcam++")
SPLIT_SUM_TOLERANCE = 1e-6


class BadValue(ValueError):
    """A value a check refuses; its message says what is allowed."""


Check = Callable[[Any], Any]


def whole(low: int, high: int | None = None) -> Check:
    allowed = f"a whole number >= {low}" if high is None else f"a whole number from {low} to {high}"

    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise BadValue(allowed)
        return value
    return check


def number(low: float, high: float | None = None, low_open: bool = False, high_open: bool = False) -> Check:
    left, right = "(" if low_open else "[", ")" if high_open or high is None else "]"
    allowed = f"a number in {left}{low}, {'inf' if high is None else high}{right}"

    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadValue(allowed)
        if value < low or (low_open and value == low):
            raise BadValue(allowed)
        if high is not None and (value > high or (high_open and value == high)):
            raise BadValue(allowed)
        return value
    return check


def one_of(*choices) -> Check:
    def spelled(choice) -> str:
        return str(choice).lower() if isinstance(choice, bool) else str(choice)

    allowed = "one of " + " | ".join(spelled(c) for c in choices)

    def check(value):
        # `x == True` holds for 1: a choice of true/false takes YAML booleans only.
        if not any(value is c if isinstance(c, bool) else (value == c and not isinstance(value, bool))
                   for c in choices):
            raise BadValue(allowed)
        return value
    return check


def flag(value):
    if not isinstance(value, bool):
        raise BadValue("true or false")
    return value


def text(value):
    if not isinstance(value, str) or not value.strip():
        raise BadValue("a non-empty string")
    return value


def optional(inner: Check) -> Check:
    def check(value):
        return None if value is None else inner(value)
    return check


def fractions(value):
    if not isinstance(value, list) or not value:
        raise BadValue("a non-empty list of numbers in [0, 1)")
    return [number(0, 1, high_open=True)(v) for v in value]


def column_names(value):
    if value is None:
        return []
    if (not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value)
            or len({v.strip() for v in value}) != len(value)):
        raise BadValue("a list of distinct column names (empty = none)")
    return [v.strip() for v in value]


def refused(param: str, value, allowed: str) -> ConfigError:
    """The one-line error every refused param gets: what it is and what is allowed."""
    return ConfigError(f"params.yaml: {param} is {shown(value)}; allowed: {allowed}")


def registered(param: str, name: str, records: Mapping):
    """records[name] for a param that names a registered record (a backbone, a data source)."""
    try:
        one_of(*records)(name)
    except BadValue as exc:
        raise refused(param, name, str(exc)) from None
    return records[name]


def param(check: Check, about: str = "") -> Any:
    """A dataclass field checked by `check`; `about` is added to its error line."""
    return field(metadata={"check": check, "about": about})


def shown(value) -> str:
    return "empty (null)" if value is None else repr(value)


def build(cls, values: Any, prefix: str):
    """A `cls` dataclass from a params mapping, every field checked; a nested
    dataclass field from its nested mapping. One ConfigError line naming the
    first bad, missing or unknown param."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"params.yaml: {prefix} must be a mapping of params, got {shown(values)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(f"params.yaml: {prefix}.{unknown[0]} is not a param; {prefix} has {', '.join(names)}")
    built = {}
    for spec in dataclasses.fields(cls):
        name = f"{prefix}.{spec.name}"
        if spec.name not in values:
            raise ConfigError(f"params.yaml: {name} is missing")
        value = values[spec.name]
        if dataclasses.is_dataclass(hints[spec.name]):
            built[spec.name] = build(hints[spec.name], value, name)
            continue
        try:
            built[spec.name] = spec.metadata["check"](value)
        except BadValue as exc:
            about = spec.metadata.get("about")
            raise refused(name, value, f"{exc} ({about})" if about else str(exc)) from None
    return cls(**built)


@dataclass(frozen=True)
class SplitSettings:
    method: str = param(one_of(*SPLIT_METHODS))
    train: float = param(number(0, 1))
    val: float = param(number(0, 1))
    test: float = param(number(0, 1))

    def ratios(self) -> dict[str, float]:
        return {"train": float(self.train), "val": float(self.val), "test": float(self.test)}


@dataclass(frozen=True)
class SecondSiteSettings:
    share: float = param(number(0, 1), "0 = off")
    exposure: float = param(number(0, low_open=True), "a gain on the grey levels; 1 = the first site's")
    noise: float = param(number(0), "times the first site's quantum noise")
    collimation: float = param(number(0, 0.25), "a fraction of each side")
    marker: bool = param(flag)


@dataclass(frozen=True)
class ShortcutSettings:
    finding: str = param(one_of(*FINDINGS))
    share_with: float = param(number(0, 1), "the share of its films with a drain")
    share_without: float = param(number(0, 1), "the share of the other films with one")


@dataclass(frozen=True)
class PhantomSettings:
    n_images: int = param(whole(1))
    image_size: int = param(whole(64))
    subgroup_gap: float = param(number(0, 1, high_open=True))
    second_site: SecondSiteSettings
    shortcut: ShortcutSettings


@dataclass(frozen=True)
class IngestSettings:
    source: str = param(text, "checked against pipeline.data.sources")
    root: str = param(text)
    labels: str = param(text)
    require_all_images: bool = param(flag)
    phantom: PhantomSettings
    split: SplitSettings
    workers: int = param(whole(0), "0 = all cores")


@dataclass(frozen=True)
class ValidateSettings:
    on_invalid: str = param(one_of(*ON_INVALID))
    min_split_patients: int = param(whole(1))


@dataclass(frozen=True)
class PreprocessSettings:
    image_size: int = param(whole(8, 4096))
    fit: str = param(one_of(*FITS))
    encoding: str = param(one_of(*ENCODINGS))
    jpeg_quality: int = param(whole(1, 100))
    shard_size: int = param(whole(1))
    min_side: int = param(whole(1))
    max_aspect: float = param(number(1))
    workers: int = param(whole(0), "0 = all cores")


@dataclass(frozen=True)
class AugmentSettings:
    rotation: float = param(number(0, 180), "degrees")
    zoom: float = param(number(0, 1, high_open=True))
    shift: float = param(number(0, 1, high_open=True))
    hflip: bool = param(flag)
    brightness: float = param(number(0, 1))
    contrast: float = param(number(0, 1, high_open=True))


@dataclass(frozen=True)
class TrainSettings:
    backbone: str = param(text)
    weights: str = param(text, "none | imagenet | a path to a weights file")
    epochs: int = param(whole(1))
    batch_size: int = param(whole(1))
    learning_rate: float = param(number(0, 10, low_open=True))
    lr_schedule: str = param(one_of(*LR_SCHEDULES))
    loss: str = param(one_of(*LOSSES))
    focal_gamma: float = param(number(0, 10))
    warmup_epochs: int = param(whole(0))
    early_stopping_patience: int = param(whole(0), "0 = off")
    deterministic: Any = param(one_of(*AUTO_FLAGS))
    mixed_precision: Any = param(one_of(*AUTO_FLAGS))
    use_metadata: bool = param(flag)
    dropout: float = param(number(0, 1, high_open=True))
    batchnorm_momentum: float = param(number(0, 1, high_open=True))
    cache: bool = param(flag)
    augment: AugmentSettings

    @property
    def pretrained(self) -> bool:
        return str(self.weights) != "none"


@dataclass(frozen=True)
class PromotionSettings:
    margin: float = param(number(0, 1))
    max_class_drop: float = param(number(0, 1))
    resamples: int = param(whole(1))
    subgroups: bool = param(flag)
    strata: bool = param(flag)


@dataclass(frozen=True)
class ServingSettings:
    """What the registered model's server accepts (written into the version's model_config)."""

    max_films_per_request: int = param(whole(1), "a request with more films is refused whole")
    # No stage reads a film over 206 MiB (pipeline.records.image_file.MAX_FILE_BYTES), whatever this says.
    max_film_mb: float = param(number(0, low_open=True), "MiB")


@dataclass(frozen=True)
class EvaluateSettings:
    threshold_method: str = param(one_of(*THRESHOLD_METHODS))
    target_sensitivity: float = param(number(0, 1, low_open=True))
    bootstrap: int = param(whole(1), "resamples of every 95% CI")
    min_slice_positives: int = param(whole(1))
    min_slice_patients: int = param(whole(1))
    calibration: str = param(one_of(*RECALIBRATION_METHODS))
    calibration_bins: int = param(whole(2))
    promotion: PromotionSettings
    serving: ServingSettings
    reference_films: int = param(whole(0), "test films profiled for `cxr monitor`; 0 = none")
    strata: list = param(column_names, "added columns of the metadata table or labels CSV to split test by")
    batch_size: int = param(whole(1))


@dataclass(frozen=True)
class ExplainSettings:
    method: str = param(one_of(*GRADCAM_METHODS))
    layer: str | None = param(optional(text), "empty = the model's last 4-D layer")
    top_k: int = param(whole(0))
    false_positives: int = param(whole(0))
    false_negatives: int = param(whole(0))
    heatmap_threshold: float = param(number(0, 1, low_open=True), "a fraction of the heatmap's maximum")
    iobb_thresholds: list = param(fractions)
    max_localisation_images: int = param(whole(0))
    min_localisation_images: int = param(whole(1), "a score's boxed films")
    batch_size: int = param(whole(1))


@dataclass(frozen=True)
class MlflowSettings:
    experiment: str = param(text)
    registered_model: str = param(text)
    timeout_s: float = param(number(0, low_open=True), "seconds")


@dataclass(frozen=True)
class Settings:
    """Every section of params.yaml, checked. `params` keeps the file's mapping
    as read, for what records params verbatim (MLflow run params, the model card)."""

    paths: dict[str, Path]
    seed: int
    ingest: IngestSettings
    validate: ValidateSettings
    preprocess: PreprocessSettings
    train: TrainSettings
    evaluate: EvaluateSettings
    explain: ExplainSettings
    mlflow: MlflowSettings
    params: dict = field(repr=False, compare=False)

    def path(self, key: str) -> Path:
        if key not in self.paths:
            raise ConfigError(f"params.yaml: paths.{key} is missing")
        return self.paths[key]

    def logged(self, *sections: str) -> dict:
        """The named top-level entries of params.yaml, as written there."""
        return {name: self.params[name] for name in sections}


SECTIONS = {"ingest": IngestSettings, "validate": ValidateSettings, "preprocess": PreprocessSettings,
            "train": TrainSettings, "evaluate": EvaluateSettings, "explain": ExplainSettings,
            "mlflow": MlflowSettings}


def check_paths(values: Any) -> dict[str, Path]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"params.yaml: paths must be a mapping of names to paths, got {shown(values)}")
    for key, value in values.items():
        if not isinstance(value, str) or not value.strip():
            raise refused(f"paths.{key}", value, "a non-empty path")
    return {key: Path(value) for key, value in values.items()}


def check_together(settings: Settings) -> None:
    """Checks that involve more than one param."""
    split = settings.ingest.split
    total = split.train + split.val + split.test
    if abs(total - 1) > SPLIT_SUM_TOLERANCE:
        raise ConfigError(f"params.yaml: ingest.split.train + val + test is {total:g} "
                          f"({split.train:g} + {split.val:g} + {split.test:g}); allowed: ratios that sum to 1")


def settings_from(params: Mapping) -> Settings:
    """Settings from a params mapping (as params.yaml reads)."""
    if not isinstance(params, Mapping):
        raise ConfigError("params.yaml: expected a mapping at the top level")
    for name in ("paths", "seed", *SECTIONS):
        if name not in params:
            raise ConfigError(f"params.yaml: {name} is missing")
    try:
        seed = whole(0)(params["seed"])
    except BadValue as exc:
        raise refused("seed", params["seed"], str(exc)) from None
    sections = {name: build(cls, params[name], name) for name, cls in SECTIONS.items()}
    settings = Settings(paths=check_paths(params["paths"]), seed=seed, params=dict(params), **sections)
    check_together(settings)
    return settings


def load_settings(path: Path | str = PARAMS_FILE) -> Settings:
    """params.yaml, read and checked (from the current directory: DVC runs stages in the repo root)."""
    return settings_from(load_params(path))


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """`settings` with dotted params changed, checked again: with_overrides(s, **{"train.epochs": 1})."""
    import copy

    params = copy.deepcopy(settings.params)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    return settings_from(params)
