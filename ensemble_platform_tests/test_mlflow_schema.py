"""A new home's MLflow store is a copy of the installation's empty schema (`governance.mlflow_schema`):
the same schema MLflow's own migrations give, and never a replacement for a store that exists."""

from __future__ import annotations

import sqlite3

from mlflow.tracking import MlflowClient

from ensemble_platform.governance import mlflow_schema
from ensemble_platform.governance.registry_connection import RegistryConnection
from ensemble_platform.settings import PlatformPaths


def schema(path) -> tuple[set[tuple[str, str, tuple[str, ...]]], list[tuple[str]]]:
    """Every table, index and trigger with its definition's clauses as a sorted tuple: MLflow's own
    migration chain writes a rebuilt table's CHECK constraints in an order that changes from one
    process to the next (seen: two `runs` constraints swapped between two runs of it), so clause
    order is not part of the schema."""
    with sqlite3.connect(path) as db:
        objects = {(kind, name, tuple(sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines())))
                   for kind, name, sql in
                   db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
        revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return objects, revision


def test_a_seeded_store_has_the_schema_mlflows_own_migrations_give(tmp_path):
    migrated = tmp_path / "migrated.db"
    MlflowClient(f"sqlite:///{migrated}").search_experiments(max_results=1)  # MLflow's migration chain

    paths = PlatformPaths.from_env(tmp_path / "home")
    connection = RegistryConnection(paths)
    seeded = paths.mlflow_dir / "mlflow.db"
    assert mlflow_schema.template_path().exists()
    assert schema(seeded) == schema(migrated)
    assert schema(seeded)[1]  # at a revision, the one MLflow migrates to
    # ... and works as a store: the default experiment, then a registered model.
    assert [e.name for e in connection.client.search_experiments()] == ["Default"]
    connection.client.create_registered_model("d.m")
    assert connection.client.get_registered_model("d.m").name == "d.m"


def test_an_existing_store_is_never_replaced(tmp_path):
    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    assert mlflow_schema.seed_sqlite_store(uri) is True  # new: copied
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE kept (x)")
    before = store.read_bytes()
    assert mlflow_schema.seed_sqlite_store(uri) is False
    assert store.read_bytes() == before
    assert mlflow_schema.seed_sqlite_store("postgresql+psycopg2://u@h/db") is False  # only sqlite files
    assert not list(tmp_path.glob(".*partial"))  # nothing half-written left beside it


def test_without_a_template_mlflow_creates_the_store_itself(tmp_path, monkeypatch):
    # A read-only installation or a changed MLflow API: the template cannot be built.
    def cannot_build(path):
        raise ImportError("cannot import name '_initialize_tables'")

    monkeypatch.setattr(mlflow_schema, "template_path", lambda: tmp_path / "installation" / "schema.db")
    monkeypatch.setattr(mlflow_schema, "_build", cannot_build)
    connection = RegistryConnection(PlatformPaths.from_env(tmp_path / "home"))
    assert not (tmp_path / "installation" / "schema.db").exists()
    assert [e.name for e in connection.client.search_experiments()] == ["Default"]


def test_a_link_planted_where_the_copy_is_written_does_not_redirect_it(tmp_path):
    # Attack: someone who can write the platform home plants symlinks at the names a new store's
    # copy could be written through, pointing at a file of the platform user (a key, say).
    victim = tmp_path / "elsewhere" / "signing.key"
    victim.parent.mkdir()
    victim.write_bytes(b"secret key bytes")
    home = tmp_path / "home"
    home.mkdir()
    for name in (".mlflow.db.partial", "mlflow.db.partial", ".mlflow.db.tmp"):
        (home / name).symlink_to(victim)
    assert mlflow_schema.seed_sqlite_store(f"sqlite:///{home / 'mlflow.db'}") is True
    assert victim.read_bytes() == b"secret key bytes"
    assert not (home / "mlflow.db").is_symlink() and schema(home / "mlflow.db")[1]
    assert not [p for p in home.iterdir() if p.name.startswith(".mlflow.db.") and not p.is_symlink()]
