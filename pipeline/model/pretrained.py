"""ImageNet weights for the keras.applications backbones, fetched as Keras fetches them.

keras.applications with weights="imagenet" calls keras.utils.get_file with a
URL and an MD5 hash and keeps the file in Keras's cache ($KERAS_HOME/models or
~/.keras/models). We build the backbones with weights=None (the input has
three channels made from the grey one, see architectures.normalise) and load
the same file ourselves, so the fetch is done here, when the model is built,
before any epoch runs: an offline machine fails in seconds, in one line that
names the file, the URL and where to put a copy.

Which file each backbone uses is in its record (pipeline.model.backbones).
"""
from __future__ import annotations

import os
import socket
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.checksum import file_md5

# An unreachable host that drops packets would otherwise hold urlretrieve for
# minutes; a stalled download also ends after this many seconds without data.
DOWNLOAD_TIMEOUT_SECONDS = 30
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class WeightsSource:
    """One ImageNet weights file: its name in the cache, where Keras downloads it
    from, and its MD5 (None where Keras publishes none: MobileNetV2)."""

    file_name: str
    url: str
    md5: str | None


class ImagenetWeightsUnavailable(FileNotFoundError):
    """The weights file is not in the cache and cannot be fetched; the message is one line."""


def keras_cache_dir() -> Path:
    """Where keras.applications keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    return Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser()) / "models"


def download_failure_reason(exc: BaseException) -> str:
    """A short reason from what get_file raised: it wraps urllib's error in a
    plain Exception ("URL fetch failure on ..."), the original kept as context."""
    cause = exc.__context__ if isinstance(exc.__context__, urllib.error.URLError) else exc
    if isinstance(cause, urllib.error.HTTPError):
        reason = f"HTTP {cause.code} {cause.reason}"
    elif isinstance(cause, urllib.error.URLError):
        reason = f"no network: {cause.reason}"
    elif isinstance(cause, (TimeoutError, ConnectionError)):
        reason = f"no network: {type(cause).__name__} {cause}"
    else:
        reason = str(cause)
    return " ".join(reason.split())


def discard_if_corrupt(path: Path, md5: str | None) -> str:
    """Remove a cached file whose MD5 is not Keras's (a partial or corrupt
    download, which Keras would also replace); returns what was found, or ""."""
    if md5 is None or not path.is_file():
        return ""
    found = file_md5(path)
    if found == md5:
        return ""
    path.unlink()
    return f"{path} failed its md5 check (expected {md5}, found {found}: a partial or corrupt file) and was removed; "


def fetch_imagenet_weights(source: WeightsSource, cache_dir: Path | None = None) -> Path:
    """The cached weights file, downloaded first with keras.utils.get_file when it
    is missing or fails its hash. Raises ImagenetWeightsUnavailable, in one line
    naming the file, the URL and where to put a copy, when it cannot be had."""
    import keras

    cache_dir = cache_dir or keras_cache_dir()
    target = cache_dir / source.file_name
    corrupt = discard_if_corrupt(target, source.md5)
    if target.is_file():
        return target
    put_it = f"download it elsewhere and put it at {target}"
    try:
        # get_file falls back to /tmp/.keras when the cache root does not exist yet.
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImagenetWeightsUnavailable(
            f"train.weights imagenet: cannot create Keras's cache {cache_dir} for {source.file_name} ({exc}); "
            f"set KERAS_HOME to a writable folder"
        ) from exc
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
    try:
        fetched = keras.utils.get_file(source.file_name, source.url, file_hash=source.md5,
                                       cache_subdir=cache_dir.name, cache_dir=str(cache_dir.parent))
    except ValueError:
        # Downloaded, but not the file Keras's hash names: drop it so no later run uses it.
        found = file_md5(target) if target.is_file() else "nothing"
        target.unlink(missing_ok=True)
        raise ImagenetWeightsUnavailable(
            f"train.weights imagenet: {corrupt}the download of {source.file_name} from {source.url} failed its md5 "
            f"check (expected {source.md5}, found {found}) and was removed; try again, or {put_it}"
        ) from None
    except Exception as exc:  # get_file raises a bare Exception for a failed fetch
        raise ImagenetWeightsUnavailable(
            f"train.weights imagenet: {corrupt}cannot download {source.file_name} from {source.url} "
            f"({download_failure_reason(exc)}); {put_it}"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return Path(fetched)
