"""Members bounded at scale: above SCALE_ROWS training rows the catalogue caps what grows
faster than the data (k-NN's reference set, forests' per-tree samples, boosting's iterations).
Forests' per-tree samples are the threshold's size (SCALE_ROWS rows per tree), so a tree's cost
stops growing there. k-NN keeps a stratified sample whose size grows with the square root of the
training rows (`knn_reference_rows`) and averages over KNN_NEIGHBOURS_FACTOR times the catalogue's
neighbours, so its cost per predicted row grows sub-linearly (its whole cost as n^1.5, not n^2).

The bounds are set as estimator parameters, so they are part of the member definition the
fingerprint hashes: a version says what was trained. Below the threshold nothing changes (the
default data's definitions, versions and metrics are those of the unbounded members).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline

# Training tables up to this many rows get the catalogue's members as they are.
SCALE_ROWS = 50_000
# k-NN keeps a stratified sample of SCALE_ROWS * sqrt(rows / SCALE_ROWS) reference rows (all 50,000
# at the threshold, 61,237 of 75k training rows, 86,603 of 150k, 193,649 of 750k), measured on the bench tables (bench/README.md, "Scale"): a fixed 50,000-row sample was
# +0.0043 holdout AUC against unbounded k-NN at 75k training rows but -0.0029 at 150k (the
# unbounded member keeps improving with the rows, a fixed sample does not); the square root keeps
# both within 0.002 (+0.0061 and +0.0008) for 1.2x and 1.7x the fixed sample's reference rows.
# A 20,000-row fixed sample lost 0.0073 at 75k rows.
# ...and averages over this many times the catalogue's neighbours: a sample's neighbourhoods hold
# fewer rows, so its estimates are noisier (86,603 rows of 150k: k=100 +0.0008 AUC, k=75 -0.0009,
# k=50 -0.0036 against the unbounded k=50). Fewer neighbours (the same share of the data as
# unbounded, k=13 of a 20k sample) lost 0.043 at 75k rows.
KNN_NEIGHBOURS_FACTOR = 2
# Each forest tree sees a bootstrap sample of this many rows: as many as a tree of a forest at the
# threshold, so a tree's cost and size stop growing there. 20,000 lost 0.0018 (random forest) and
# 0.0030 (extra trees) holdout AUC on the 100k-row bench table and 0.0037 / 0.0022 at 200k rows;
# 50,000 loses at most 0.0011 at both sizes (bench/README.md, "Scale").
FOREST_SAMPLE_ROWS = SCALE_ROWS
# Boosting stops when the loss on a split of the fit's own rows has not improved for this many iterations.
BOOSTING_PATIENCE = 20
BOOSTING_VALIDATION_FRACTION = 0.1


class ReferenceSampleKNeighbors(KNeighborsClassifier):
    """k-nearest neighbours whose reference set is a stratified, seeded sample of at most
    `max_reference` training rows (all rows when fewer): prediction costs O(max_reference) per
    row instead of O(training rows), and fitting stays linear."""

    def __init__(self, n_neighbors=5, *, weights="uniform", algorithm="auto", leaf_size=30, p=2,
                 metric="minkowski", metric_params=None, n_jobs=None, max_reference=None, random_state=None):
        super().__init__(n_neighbors=n_neighbors, weights=weights, algorithm=algorithm, leaf_size=leaf_size,
                         p=p, metric=metric, metric_params=metric_params, n_jobs=n_jobs)
        self.max_reference = max_reference
        self.random_state = random_state

    def fit(self, X, y):
        y = np.asarray(y)
        if self.max_reference is not None and len(y) > self.max_reference:
            X, _, y, _ = train_test_split(X, y, train_size=self.max_reference, stratify=y,
                                          random_state=self.random_state)
        return super().fit(X, y)


def knn_reference_rows(n_rows: int) -> int:
    """Reference rows of the bounded k-NN trained on `n_rows` rows: SCALE_ROWS * sqrt(n_rows /
    SCALE_ROWS), rounded (the threshold's rows at the threshold, growing sub-linearly above it)."""
    return min(n_rows, round(SCALE_ROWS * math.sqrt(n_rows / SCALE_ROWS)))


def bounded_for_rows(name: str, pipeline: Pipeline, n_rows: int, seed: int) -> Pipeline:
    """The catalogue member `name` as trained on `n_rows` training rows: unchanged up to SCALE_ROWS,
    bounded above it (see the module docstring)."""
    if n_rows <= SCALE_ROWS:
        return pipeline
    model = pipeline.steps[-1][1]
    if name == "k_nearest_neighbours":
        params = model.get_params() | {"n_neighbors": KNN_NEIGHBOURS_FACTOR * model.n_neighbors}
        pipeline.steps[-1] = (pipeline.steps[-1][0], ReferenceSampleKNeighbors(
            **params, max_reference=knn_reference_rows(n_rows), random_state=seed))
    elif name in ("random_forest", "extra_trees"):
        model.set_params(bootstrap=True, max_samples=FOREST_SAMPLE_ROWS)
    elif name == "hist_gradient_boosting":
        model.set_params(early_stopping=True, validation_fraction=BOOSTING_VALIDATION_FRACTION,
                         n_iter_no_change=BOOSTING_PATIENCE, scoring="loss")
    return pipeline
