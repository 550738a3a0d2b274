"""New production data, as batch files: the inbox they arrive in, the batches the platform has
accepted or quarantined, and the labelled batches a retraining adds to the training data.

    inbox/<dataset>/<file>.csv|.parquet      arrivals (`ensemble-platform register-batch`, or any
                                             process that writes there atomically)
    batches/<dataset>/<batch_id>/            received: source.<ext>; accepted: + accepted.json
    quarantine/<dataset>/<batch_id>/         failed validation: source.<ext> + reason.json

A batch id is the file's stem plus 8 hex digits of its SHA-256, so the same file dropped twice is
one batch, and two files of one name are two. The Dagster partition key of a batch is
`<dataset>__<batch_id>`: one partitioned asset serves every dataset.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ensemble_platform.data.loading import read_csv
from ensemble_platform.data.schema import with_datetime_parts
from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.errors import DataError
from ensemble_platform.files import atomic_path, write_json
from ensemble_platform.settings import PlatformPaths

BATCH_SUFFIXES = (".csv", ".parquet", ".pq")
KEY_SEPARATOR = "__"
ACCEPTED = "accepted.json"
REASON = "reason.json"


def partition_key(dataset: str, batch_id: str) -> str:
    return f"{dataset}{KEY_SEPARATOR}{batch_id}"


def split_partition_key(key: str) -> tuple[str, str]:
    dataset, separator, batch_id = key.partition(KEY_SEPARATOR)
    if not separator or not dataset or not batch_id:
        raise DataError(f"batch partition key {key!r} is not '<dataset>{KEY_SEPARATOR}<batch id>'")
    return dataset, batch_id


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Hex digits of the content's SHA-256 in a batch id: the id names the content, so two different
# files never share one, whatever their names.
ID_HASH_DIGITS = 16
# A file in the inbox that is not a batch file may be a copy in progress: `register`'s `.tmp`, rsync's
# `.name.csv.XXXXXX`, a browser's `.part`, renamed to its final name when complete. Left alone until
# unchanged for this long; then it is a leftover (or not data) and is quarantined with the reason.
STALE_TMP_SECONDS = 300


def _readable_stem(path: Path, digest: str) -> str:
    stem = path.stem.removesuffix(f"-{digest}")
    return (re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "batch")[:60]


def batch_id_of(path: Path) -> str:
    digest = _sha256(path)[:ID_HASH_DIGITS]
    return f"{_readable_stem(path, digest)}-{digest}"


@dataclass(frozen=True)
class InboxFile:
    dataset: str
    path: Path
    batch_id: str

    @property
    def key(self) -> str:
        return partition_key(self.dataset, self.batch_id)


class BatchStore:
    def __init__(self, paths: PlatformPaths):
        self.home = paths.home

    def inbox(self, dataset: str) -> Path:
        return self.home / "inbox" / dataset

    def batch_dir(self, dataset: str, batch_id: str) -> Path:
        return self.home / "batches" / dataset / batch_id

    def quarantine_dir(self, dataset: str, batch_id: str) -> Path:
        return self.home / "quarantine" / dataset / batch_id

    # --- arrival ------------------------------------------------------------------------------

    def register(self, dataset: str, source: Path) -> InboxFile:
        """Copy a batch file into the dataset's inbox (atomically: the sensor never sees half a file)."""
        source = Path(source)
        if not source.is_file():
            raise DataError(f"batch file {source} does not exist")
        if source.suffix.lower() not in BATCH_SUFFIXES:
            raise DataError(f"batch file {source} must end in {' or '.join(BATCH_SUFFIXES)}, got {source.suffix!r}")
        inbox = self.inbox(dataset)
        inbox.mkdir(parents=True, exist_ok=True)
        # The inbox name carries the content hash: a second, different `batch.csv` lands beside the
        # first instead of over it, and registering the same file twice is the same batch.
        digest = _sha256(source)[:ID_HASH_DIGITS]
        target = inbox / f"{_readable_stem(source, digest)}-{digest}{source.suffix.lower()}"
        if not target.is_file():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        return InboxFile(dataset, target, batch_id_of(target))

    def pending(self, dataset: str) -> list[InboxFile]:
        inbox = self.inbox(dataset)
        if not inbox.is_dir():
            return []
        # Hidden files count too: a file nobody takes in would sit in the inbox unseen forever.
        return [InboxFile(dataset, p, batch_id_of(p)) for p in sorted(inbox.iterdir())
                if p.is_file() and p.suffix.lower() in BATCH_SUFFIXES]

    def unusable(self, dataset: str) -> list[tuple[Path, str]]:
        """Files in the inbox that can never become a batch, each with the reason."""
        inbox = self.inbox(dataset)
        if not inbox.is_dir():
            return []
        found = []
        for path in sorted(inbox.iterdir()):
            if path.is_dir():
                found.append((path, "a folder, not a batch file"))
            elif path.suffix.lower() not in BATCH_SUFFIXES:
                try:  # lstat: a dangling link is quarantined, not an error; a copy renamed meanwhile is gone
                    age = time.time() - path.lstat().st_mtime
                except FileNotFoundError:
                    continue
                if age <= STALE_TMP_SECONDS:
                    continue  # perhaps still being copied in
                found.append((path, "an unfinished copy left behind (register was interrupted)" if path.suffix == ".tmp"
                              else f"not a batch file: the name must end in {' or '.join(BATCH_SUFFIXES)} "
                                   f"(unchanged for {STALE_TMP_SECONDS} s, so not a copy in progress)"))
        return found

    def reject_unusable(self, dataset: str) -> list[Path]:
        """Move every unusable inbox file to quarantine with a reason.json (nothing is dropped
        silently); returns where each went."""
        moved = []
        for path, reason in self.unusable(dataset):
            folder = self.quarantine_dir(dataset, f"unusable-{re.sub(r'[^A-Za-z0-9_-]+', '-', path.name)[:60]}"
                                                  f"-{time.time_ns()}")
            folder.mkdir(parents=True)
            shutil.move(str(path), folder / path.name)
            write_json({"file": path.name, "reason": reason}, folder / "reason.json")
            moved.append(folder)
        return moved

    def receive(self, dataset: str, batch_id: str) -> Path:
        """Move the batch's file from the inbox into its batch folder (idempotent: a batch that
        was received already is found where it is)."""
        for folder in (self.batch_dir(dataset, batch_id), self.quarantine_dir(dataset, batch_id)):
            received = sorted(folder.glob("source.*")) if folder.is_dir() else []
            if received:
                return received[0]
        for arrival in self.pending(dataset):
            if arrival.batch_id == batch_id:
                folder = self.batch_dir(dataset, batch_id)
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"source{arrival.path.suffix.lower()}"
                arrival.path.replace(target)
                return target
        raise DataError(f"batch {batch_id} of {dataset} is neither in {self.inbox(dataset)} nor received")

    # --- verdicts -----------------------------------------------------------------------------

    def accept(self, dataset: str, batch_id: str, facts: dict) -> Path:
        return write_json(facts, self.batch_dir(dataset, batch_id) / ACCEPTED)

    def quarantine(self, dataset: str, batch_id: str, reason: dict) -> Path:
        """Move the batch to quarantine with the reason beside it; nothing downstream reads it."""
        source, target = self.batch_dir(dataset, batch_id), self.quarantine_dir(dataset, batch_id)
        if source.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            source.replace(target)
        write_json(reason, target / REASON)
        return target

    def accepted(self, dataset: str) -> list[tuple[str, Path]]:
        """(batch id, source file) of every accepted batch, in batch-id order."""
        root = self.home / "batches" / dataset
        if not root.is_dir():
            return []
        return [(folder.name, next(folder.glob("source.*"))) for folder in sorted(root.iterdir())
                if (folder / ACCEPTED).is_file() and any(folder.glob("source.*"))]

    def sources(self, dataset: str) -> list[Path]:
        """The file of every batch of the dataset wherever it stands: in the inbox, received, accepted or
        quarantined (what a producer checks to avoid sending the same rows twice)."""
        found = [arrival.path for arrival in self.pending(dataset)]
        for root in (self.home / "batches" / dataset, self.home / "quarantine" / dataset):
            if root.is_dir():
                found += [source for folder in sorted(root.iterdir()) if folder.is_dir()
                          for source in sorted(folder.glob("source.*"))]
        return found

    def training_additions(self, spec: DatasetSpec) -> list[pd.DataFrame]:
        """The accepted batches a retraining adds under the spec's policy: the labelled rows of
        every accepted batch that carries the target (or none)."""
        if spec.automation.include_batches == "none":
            return []
        additions = []
        for _, source in self.accepted(spec.name):
            table = read_batch(source)
            if spec.target in table.columns:
                labelled = table[table[spec.target].notna()]
                if len(labelled):
                    additions.append(labelled)
        return additions


def read_batch(path: Path, datetime: tuple[str, ...] = ()) -> pd.DataFrame:
    """The batch file's rows, with the numeric parts of the `datetime` columns (those the members
    use) derived as at training."""
    try:
        table = read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"batch file {path} could not be read as {path.suffix[1:]}: {exc}") from exc
    return with_datetime_parts(table, [c for c in datetime if c in table.columns])
