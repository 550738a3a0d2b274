"""Inputs an attacker or a careless sender controls: batch files in the inbox and table headers.
Nothing is overwritten, ignored or renamed silently."""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest

from ensemble_platform.data.batches import STALE_TMP_SECONDS, BatchStore
from ensemble_platform.data.loading import read_csv
from ensemble_platform.errors import DataError
from ensemble_platform.settings import PlatformPaths


def test_two_different_files_with_one_name_are_two_batches(tmp_path):
    store = BatchStore(PlatformPaths.from_env(tmp_path / "home"))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "batch.csv", tmp_path / "b" / "batch.csv"
    pd.DataFrame({"x": [1, 2]}).to_csv(first, index=False)
    pd.DataFrame({"x": [3, 4]}).to_csv(second, index=False)
    one, two = store.register("d", first), store.register("d", second)
    assert one.batch_id != two.batch_id and one.path != two.path
    assert pd.read_csv(one.path)["x"].tolist() == [1, 2] and pd.read_csv(two.path)["x"].tolist() == [3, 4]
    assert sorted(a.batch_id for a in store.pending("d")) == sorted([one.batch_id, two.batch_id])
    assert store.register("d", first).batch_id == one.batch_id  # the same content is the same batch


def test_a_hidden_batch_file_is_taken_in_and_an_unusable_file_is_quarantined_with_its_reason(tmp_path):
    """A file that is not a batch file is quarantined once it has been left unchanged for STALE_TMP_SECONDS:
    before that it may be a copy in progress (rsync writes `.name.csv.XXXXXX` and renames it when done;
    taken at once, the rename failed and the batch was lost)."""
    store = BatchStore(PlatformPaths.from_env(tmp_path / "home"))
    inbox = store.inbox("d")
    inbox.mkdir(parents=True)
    pd.DataFrame({"x": [1]}).to_csv(inbox / ".x.csv", index=False)
    (inbox / "notes.txt").write_text("not data")
    copying = inbox / ".batch.csv.Xy12ab"
    copying.write_text("x\n2\n")
    (inbox / "latest").symlink_to(inbox / "nowhere")  # dangling: stat() raised and failed every sensor tick
    assert [a.path.name for a in store.pending("d")] == [".x.csv"]
    assert store.reject_unusable("d") == [] and copying.exists()  # both may still be being copied in
    copying.rename(inbox / "batch.csv")  # the copy completes
    old = time.time() - STALE_TMP_SECONDS - 1
    os.utime(inbox / "notes.txt", (old, old))
    os.utime(inbox / "latest", (old, old), follow_symlinks=False)
    moved = store.reject_unusable("d")
    assert len(moved) == 2 and (moved[1] / "notes.txt").read_text() == "not data"
    assert "must end in" in json.loads((moved[0] / "reason.json").read_text())["reason"]
    assert not (inbox / "notes.txt").exists()
    assert sorted(a.path.name for a in store.pending("d")) == [".x.csv", "batch.csv"]


def test_a_csv_with_a_duplicate_header_is_refused_naming_it(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("a,b,a\n1,2,3\n")
    with pytest.raises(DataError, match=r"column\(s\) \['a'\] more than once"):
        read_csv(path)
