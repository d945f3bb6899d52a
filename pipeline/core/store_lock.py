"""A local SQLite MLflow store that parallel stages cannot break.

MLflow creates and migrates a SQLite store's schema on first use, from every
process that opens it; two stages starting together on a fresh store both
migrate it and leave it half-migrated. Here the file is checked (never written)
and the schema created once, under an exclusive lock beside the database, so
every later connection finds it ready. The registry's champion decision is
serialised with a second lock beside it, or with a lease on a tracking
server (registry_lock).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"
# A lock holder is another stage creating the schema or deciding a champion
# (which scores the champion model): minutes at most, never forever.
DEFAULT_LOCK_TIMEOUT_S = 900.0
LOCK_POLL_S = 0.1
LEASE_SUFFIX = ".decision-lease"
LEASE_POLL_S = 0.5
# A server lease this old was left by a killed holder (a decision takes minutes).
LEASE_STALE_S = 600.0


class StoreError(RuntimeError):
    """The local MLflow store is unusable (empty, not SQLite, malformed) or locked for too long."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative or absolute), None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_sqlite_file(database: Path) -> None:
    """Raise StoreError when an existing file cannot be an MLflow store; read-only.

    A missing file is fine (it is created); an empty one is not: MLflow would
    silently create tables in a file someone else may have truncated.
    """
    if not database.exists():
        return
    if database.stat().st_size == 0:
        raise StoreError(f"MLflow store {database} is empty (0 bytes): not an MLflow store; move it aside, "
                         "a new one is created")
    with open(database, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise StoreError(f"MLflow store {database} is not an SQLite database (malformed): move it aside or restore "
                         "it from a backup")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            problem = connection.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    if problem != "ok":
        raise StoreError(f"MLflow store {database} is malformed ({problem}): move it aside or restore it from a "
                         "backup")


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, timeout_s: float, holder: str) -> Iterator[None]:
    """flock(LOCK_EX) on lock_file, waiting at most timeout_s; the lock dies with its process (kill -9 too)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(f"{lock_file}: still locked after {timeout_s:g}s by another stage "
                                     f"({holder}); wait for it or raise mlflow.timeout_s") from None
                time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_sqlite_store(uri: str, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
    """Check a sqlite:/// store's file and create or migrate its schema once, under
    "<db>.lock"; nothing for other stores. Raises StoreError naming the file."""
    database = sqlite_path(uri)
    if database is None:
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(database.with_name(database.name + ".lock"), timeout_s, "creating the schema"):
        # Checked under the lock only: a store being created by another stage is
        # briefly an empty file, which must not read as "empty" to this one.
        check_sqlite_file(database)
        from mlflow.tracking import MlflowClient

        # Building MLflow's tracking and registry stores creates the tables or
        # migrates them; MLflow caches the stores per URI, so this process
        # does it once and every other one finds the schema at head.
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)


def registry_lock(uri: str, registered_name: str, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S):
    """Held from reading the champion to moving its alias: for a SQLite store an
    exclusive lock on "<db>.registry.lock"; for a server a lease (server_lease);
    nothing for other stores (a file store has no registry)."""
    database = sqlite_path(uri)
    if database is not None:
        return exclusive_lock(database.with_name(database.name + ".registry.lock"), timeout_s,
                              "deciding a champion")
    if uri.startswith(("http://", "https://")):
        return server_lease(uri, registered_name, timeout_s)
    return contextlib.nullcontext()


@contextlib.contextmanager
def server_lease(uri: str, registered_name: str, timeout_s: float) -> Iterator[None]:
    """A lock on a tracking server, which offers no lock: the registered model
    "<name>.decision-lease", whose creation succeeds for one client only (its
    name is unique in the server's database) and which is deleted after. A
    lease older than LEASE_STALE_S was left by a killed holder and is broken."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    lease = f"{registered_name}{LEASE_SUFFIX}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(lease, tags={"holder": f"{socket.gethostname()} pid {os.getpid()}"},
                                           description="held while a champion is decided; deleted after")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        if _lease_age_s(client, lease) > LEASE_STALE_S:
            _delete_quietly(client, lease)
            continue
        if time.monotonic() >= deadline:
            raise StoreError(f"registered model {lease} on {uri}: still held after {timeout_s:g}s by another "
                             "stage deciding a champion; wait for it, or delete it if no stage runs")
        time.sleep(LEASE_POLL_S)
    try:
        yield
    finally:
        _delete_quietly(client, lease)


def _lease_age_s(client, lease: str) -> float:
    from mlflow.exceptions import MlflowException

    try:
        created_ms = client.get_registered_model(lease).creation_timestamp or 0
    except MlflowException:  # released meanwhile
        return 0.0
    return time.time() - created_ms / 1000


def _delete_quietly(client, lease: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lease)
    except MlflowException:  # already released or broken by another client
        pass
