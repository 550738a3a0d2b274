"""A new platform home's MLflow store starts as a copy of an empty, fully migrated sqlite schema.

MLflow creates a fresh sqlite store by running its whole chain of Alembic migrations, one by one:
1.1 s on the 2-core reference machine, paid by every new home (each `make demo` on a new machine,
each bench size, each test that registers a model), and 0.4 s when it opens an existing store.
The result of that chain depends only on the installed MLflow, so it is built once per
installation, by MLflow's own `_initialize_tables` (the call its store makes on an empty
database), kept beside the installed packages (`sys.prefix`, where the threat model's writer of
the platform home cannot write) and copied into each new home. A store that exists is never
touched; where the template cannot be built or kept (a read-only installation, a changed MLflow
API), MLflow creates the store itself as before. A test compares the copied schema with the one
MLflow migrates, table by table and at the same Alembic revision.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

_log = logging.getLogger(__name__)


def template_path() -> Path:
    """Where this installation keeps the empty schema, one file per MLflow version."""
    from importlib import metadata

    return Path(sys.prefix) / "var" / "ensemble_platform" / f"mlflow-{metadata.version('mlflow')}-sqlite-schema.db"


def seed_sqlite_store(tracking_uri: str) -> bool:
    """Copy the empty schema to the sqlite store `tracking_uri` names if that file does not exist
    yet; True when it was copied. The caller holds the home's migration lock."""
    if not tracking_uri.startswith("sqlite:///"):
        return False
    store = Path(tracking_uri.removeprefix("sqlite:///"))
    if store.exists():
        return False
    template = _template()
    if template is None:
        return False
    # The copy goes to a fresh, exclusively created name (never a fixed one: a link planted there by
    # whoever can write the home would redirect the write), written through the descriptor that
    # created it, fsynced, then renamed over the store's name. Not `files.atomic_path`: that hands
    # its writers a path, reopened by name after the descriptor is closed, and this copy needs none.
    descriptor, partial = tempfile.mkstemp(prefix=f".{store.name}.", suffix=".partial", dir=store.parent)
    try:
        with os.fdopen(descriptor, "wb") as out, open(template, "rb") as source:
            shutil.copyfileobj(source, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, store)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return True


def _template() -> Path | None:
    path = template_path()
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                _build(path)
        return path
    except Exception as exc:  # any failure means: let MLflow create the store itself
        _log.info("no MLflow schema template (%s); MLflow migrates the new store itself", exc)
        return None


def _build(path: Path) -> None:
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        partial = Path(scratch) / path.name
        engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(partial, path)
