"""One record per data source (ingest.source): its reader, the contract its
manifest is validated against, and what the data is, in the words every page
that shows a figure uses (as torchxrayvision keeps one contract per dataset).

A new source is one `register(DataSource(...))`: a reader from its root (and
the split, seed and labels params) to a manifest, the rows it rejected and a
report; the manifest contract its image ids follow; and a description. The
ingest stage reads by it, the validate stage checks by its contract, and the
model card and version notes describe the data by it.

This module loads no pandas or Great Expectations (readers are imported when
called, pipeline.data.readers), so a stage checks ingest.source at its start
in milliseconds.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.core.config import ConfigError
from pipeline.core.settings import registered

SYNTHETIC_WARNING = "synthetic phantom: these figures say nothing about clinical performance"


@dataclass(frozen=True)
class ManifestContract:
    """What a source's manifest promises beyond the common columns (pipeline.data.validate)."""

    name: str  # names its Great Expectations suite
    image_id_regex: str
    image_id_description: str
    unknown_allowed: tuple[str, ...] = ()  # columns whose "unknown" passes (a labels CSV's optional sex and view)


# NIH's Image Index, or a plain relative POSIX path to a PNG, JPEG or DICOM
# file: no leading '/', no '\', no '.' or '..' part, no empty part.
NIH_CONTRACT = ManifestContract("nih", r"^\d{8}_\d{3}\.png$", "image_id looks like NIH's 00000001_000.png")
FOLDER_CONTRACT = ManifestContract(
    "folder", r"^(?!/)(?!.*\\)(?!(?:.*/)?\.\.?(?:/|$))(?!.*//).+\.(?i:png|jpe?g|dcm)$",
    "image_id is a plain relative path to a .png, .jpg, .jpeg or .dcm file", unknown_allowed=("sex", "view"))


@dataclass(frozen=True)
class SourceRequest:
    """What a reader gets: the data root and the ingest params that shape the manifest."""

    root: Path
    split: dict  # ingest.split: method and ratios
    seed: int
    require_all_images: bool
    labels: str | None  # ingest.labels, relative to root unless absolute
    strata: tuple[str, ...] = ()  # evaluate.strata: added columns the labels CSV may carry


Reader = Callable[[SourceRequest], tuple]  # -> (manifest DataFrame, rejected rows, report dict)


@dataclass(frozen=True)
class DataSource:
    name: str
    description: str  # what the data is, on every page that shows its figures
    # The reader, or "module:function" naming it: named, not imported, so that
    # the stages that only check or describe a source (phantom, validate,
    # evaluate) do not depend on the readers' code (dvc.yaml).
    reader: Reader | str
    contract: ManifestContract
    synthetic: bool = False  # its figures say nothing about clinical performance
    root_is_phantom_output: bool = False  # ingest.root must be paths.phantom (the phantom stage writes it)


    def read(self, request: SourceRequest) -> tuple:
        reader = self.reader
        if isinstance(reader, str):
            module, function = reader.split(":")
            reader = getattr(importlib.import_module(module), function)
        return reader(request)


SOURCES: dict[str, DataSource] = {}


def register(source: DataSource) -> DataSource:
    SOURCES[source.name] = source
    return source


def source_named(name: str) -> DataSource:
    return registered("ingest.source", name, SOURCES)


def check_source_settings(name: str, root: str | Path, phantom_dir: Path) -> DataSource:
    """ingest.source and ingest.root together, at a stage's start."""
    source = source_named(name)
    if source.root_is_phantom_output and Path(root).absolute() != Path(phantom_dir).absolute():
        raise ConfigError(f"params.yaml: ingest.root is {root} but must be {phantom_dir} (paths.phantom) when "
                          f"ingest.source is {name}")
    return source


READERS = "pipeline.data.readers"
register(DataSource("phantom", "synthetic chest phantom", f"{READERS}:read_phantom", NIH_CONTRACT, synthetic=True,
                    root_is_phantom_output=True))
register(DataSource("nih", "NIH ChestX-ray14", f"{READERS}:read_nih", NIH_CONTRACT))
register(DataSource("kaggle-sample", "NIH ChestX-ray14 (Kaggle's 5,606-image sample)", f"{READERS}:read_kaggle_sample",
                    NIH_CONTRACT))
register(DataSource("folder", "your own films (folder source)", f"{READERS}:read_folder", FOLDER_CONTRACT))


def is_synthetic(name: str | None) -> bool:
    return name in SOURCES and SOURCES[name].synthetic


def source_name(name: str | None) -> str:
    """"synthetic chest phantom", "NIH ChestX-ray14", ... ("unknown data source" for None)."""
    if name is None:
        return "unknown data source"
    return SOURCES[name].description if name in SOURCES else name


def synthetic_warning(name: str | None) -> str:
    """The warning as a sentence of its own ("Synthetic phantom: ...") for a synthetic source, "" for any other."""
    return SYNTHETIC_WARNING[0].upper() + SYNTHETIC_WARNING[1:] if is_synthetic(name) else ""


def source_sentence(name: str | None) -> str:
    """One sentence naming the data, with the warning when it is synthetic."""
    text = f"Data: {source_name(name)} (ingest.source {name})."
    return f"{text} {synthetic_warning(name)}." if is_synthetic(name) else text
