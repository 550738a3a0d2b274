"""Agreement analysis maths, report rendering and the model card, on small hand-made inputs."""

import base64
import re

import numpy as np
import pandas as pd
import pytest

from ensemble_platform.evaluation.agreement_report import (
    agreement_report,
    error_correlation,
    pairwise_disagreement,
)
from ensemble_platform.governance.figures import matrix_figure, vote_share_figure
from ensemble_platform.governance.rendering import ReportDocument, Section, md_table, write_report
from ensemble_platform.members.catalogue import CATALOGUE, key_params
from ensemble_platform.policy import GapThreshold, GovernancePolicy, worst_status

# Three members, four rows. Ensemble decisions (p >= 0.5): 1, 0, 1, 0.
P = np.array([
    [0.9, 0.8, 0.7],   # members vote 1,1,1 -> agree 3/3
    [0.2, 0.6, 0.1],   # votes 0,1,0 vs ensemble 0 -> 2/3
    [0.6, 0.4, 0.3],   # votes 1,0,0 vs ensemble 1 -> 1/3
    [0.4, 0.45, 0.1],  # votes 0,0,0 -> 3/3
])
ENSEMBLE = np.array([0.8, 0.3, 0.55, 0.3])
Y = np.array([1, 1, 1, 0])  # correct: yes, no, yes, yes


def _report(segments=None, min_rows=1):
    segments = segments if segments is not None else {"region": pd.Series(["n", "n", "s", "s"])}
    return agreement_report(P, ["a", "b", "c"], Y, ENSEMBLE, review_threshold=0.6, decision_threshold=0.5,
                            segments=segments, min_segment_rows=min_rows)


def test_vote_share_levels_review_share_and_accuracy_known_answer():
    r = _report()
    levels = {level["members_agreeing"]: level for level in r["vote_share"]["levels"]}
    assert {k: v["rows"] for k, v in levels.items()} == {1: 1, 2: 1, 3: 2}
    assert levels[3]["accuracy"] == 1.0 and levels[2]["accuracy"] == 0.0
    assert r["vote_share"]["mean"] == pytest.approx((1 + 2 / 3 + 1 / 3 + 1) / 4)
    assert r["vote_share"]["unanimous_share"] == 0.5
    # Below 0.6: only the 1/3 row (2/3 = 0.667 is above).
    assert r["review"] == {"rows": 1, "share": 0.25}
    assert r["accuracy_by_agreement"] == {"high": {"rows": 3, "accuracy": pytest.approx(2 / 3)},
                                          "low": {"rows": 1, "accuracy": 1.0}}


def test_segments_rank_the_review_prone_first_and_flag_thin_ones():
    r = _report(min_rows=2)
    north, south = r["segments"]["region"][1], r["segments"]["region"][0]
    assert (south["segment"], south["review_share"], south["rows"]) == ("s", 0.5, 2)
    assert (north["segment"], north["review_share"]) == ("n", 0.0)
    assert south["accuracy"] == 1.0 and north["accuracy"] == 0.5
    assert [s["segment"] for s in r["top_review_segments"]] == ["s", "n"]
    thin = _report(min_rows=3)
    assert all(s["thin"] for s in thin["segments"]["region"]) and thin["top_review_segments"] == []


def test_error_correlation_and_disagreement_known_answers():
    y = np.array([0, 1, 0, 1])
    same = np.array([0.1, 0.7, 0.4, 0.9])
    opposite = 1 - same
    M = np.column_stack([same, same, opposite])
    corr = error_correlation(M, y)
    assert corr[0, 1] == pytest.approx(1.0)
    r0, r2 = same - y, opposite - y
    assert corr[0, 2] == pytest.approx(np.corrcoef(r0, r2)[0, 1])
    disagreement = pairwise_disagreement(M, 0.5)
    # same votes 0,1,0,1; opposite votes 1,0,1,0 -> differ on every row.
    assert disagreement[0, 1] == 0.0 and disagreement[0, 2] == 1.0 and disagreement[2, 0] == 1.0


def test_agreement_report_rejects_misshapen_input():
    with pytest.raises(ValueError, match="3 members"):
        agreement_report(P[:, :2], ["a", "b", "c"], Y, ENSEMBLE, 0.6, 0.5, {})
    with pytest.raises(ValueError, match="'region'.*2 labels for 4 rows"):
        agreement_report(P, ["a", "b", "c"], Y, ENSEMBLE, 0.6, 0.5, {"region": pd.Series(["n", "s"])})


def test_gap_thresholds_and_worst_status():
    difference = GapThreshold(warn=0.1, fail=0.2)
    assert [difference.status(v) for v in (0.1, 0.15, 0.2, 0.21)] == ["pass", "warn", "warn", "fail"]
    ratio = GapThreshold(warn=0.8, fail=0.6, higher_is_worse=False)
    assert [ratio.status(v) for v in (0.9, 0.8, 0.7, 0.59)] == ["pass", "pass", "warn", "fail"]
    assert worst_status(["pass", "thin", "warn"]) == "warn" and worst_status([]) == "pass"
    with pytest.raises(ValueError, match="fail"):
        GapThreshold(warn=0.2, fail=0.1)
    with pytest.raises(ValueError, match="agreement_threshold"):
        GovernancePolicy(agreement_threshold=1.5)


def test_html_is_self_contained_escapes_data_and_embeds_figures(tmp_path):
    figure = vote_share_figure([{"vote_share": 0.5, "rows": 3, "accuracy": 0.5},
                                {"vote_share": 1.0, "rows": 7, "accuracy": 0.9}], 0.6)
    document = ReportDocument("Title", "sub", [
        Section("Numbers", md_table(["segment", "value"], [["<script>alert(1)</script>", 0.123456], ["a|b", None]]),
                [figure]),
    ])
    paths = write_report(document, tmp_path, "report", {"value": 0.123456})
    html = paths["html"].read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<table>" in html and "0.1235" in html and "a|b" in html
    assert re.findall(r'src="([^"]+)"', html) and all(s.startswith("data:image/png;base64,")
                                                      for s in re.findall(r'src="([^"]+)"', html))
    assert not re.search(r"https?://", html)
    assert (tmp_path / "figures" / "vote_share.png").read_bytes() == figure.png
    assert "![" in paths["markdown"].read_text() and "figures/vote_share.png" in paths["markdown"].read_text()
    assert "figures/" not in document.markdown(figure_dir=None)
    # For Dagster's Markdown metadata: the figure itself, as a base64 PNG data URI.
    embedded = re.findall(r"\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", document.markdown(embed_figures=True))
    assert [base64.b64decode(e) for e in embedded] == [figure.png]
    assert not list(tmp_path.rglob("*.tmp"))


def test_figures_are_byte_identical_for_the_same_numbers():
    matrix = [[1.0, 0.3], [0.3, 1.0]]
    a = matrix_figure("m", "title", matrix, ["x", "y"], -1, 1)
    b = matrix_figure("m", "title", matrix, ["x", "y"], -1, 1)
    assert a.png == b.png and a.png[:8] == b"\x89PNG\r\n\x1a\n"
    assert matrix_figure("m", "title", [[1.0, 0.5], [0.5, 1.0]], ["x", "y"], -1, 1).png != a.png


def test_key_params_are_the_catalogues_choices(split):
    pipeline = CATALOGUE["hist_gradient_boosting"].build(split.schema, 0)
    params = key_params(pipeline)
    assert params["random_state"] == 0
    defaults = type(pipeline.named_steps["model"])().get_params()
    assert all(defaults.get(k) != v for k, v in params.items())
    assert "n_jobs" not in key_params(CATALOGUE["random_forest"].build(split.schema, 0))


def test_runtime_serves_the_calibrated_probability(split):
    """The calibrator in the config is applied by the runtime that validation and serving share."""
    from ensemble_platform.ensemble.calibrators import ProbabilityCalibrator
    from ensemble_platform.ensemble.runtime import EnsembleRuntime
    from ensemble_platform.ensemble.strategies import SoftAverage

    rng = np.random.default_rng(0)
    P = rng.uniform(0.05, 0.95, size=(400, 3))
    y = (rng.uniform(size=400) < P.mean(axis=1) ** 2).astype(int)  # miscalibrated on purpose
    combiner = SoftAverage().fit(P, y)
    calibrator = ProbabilityCalibrator("sigmoid").fit(combiner.positive_proba(P), y)
    runtime = EnsembleRuntime("d", "1.0.0", split.schema, {}, combiner, calibrator, agreement_threshold=0.6)
    before, after = runtime.proba_from_members(P, split.X_holdout())  # soft average reads P only
    np.testing.assert_array_equal(before, P.mean(axis=1))
    np.testing.assert_array_equal(after, calibrator.transform(before))
    assert np.abs(after - before).max() > 0.05
