"""Reports cannot run script: values from the data (category and group values, column, member and
batch names, a reviewer's note) are inert in every report, in our Markdown and HTML and in
Evidently's drift HTML; a headless Chromium confirms that a payload setting `document.title` never
runs (and, as a control, that it does run where nothing escapes it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt

from ensemble_platform.data.schema import FeatureSchema
from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.ensemble.calibrators import select_calibrator
from ensemble_platform.ensemble.config import EnsembleConfig, MemberRef
from ensemble_platform.evaluation.agreement_report import agreement_report
from ensemble_platform.evaluation.drift import (
    DriftInputs,
    drift_report,
    escape_embedded_data,
    safe_labels,
)
from ensemble_platform.evaluation.fairness import fairness_report
from ensemble_platform.evaluation.metrics import METRIC_NAMES
from ensemble_platform.governance.figures import fairness_gap_figure
from ensemble_platform.governance.model_card import REPORT_FILES, MemberEntry, ModelCardInputs, model_card
from ensemble_platform.governance.monitoring import PerformanceHistory
from ensemble_platform.governance.rendering import ReportDocument, Section, fmt, md_table, md_text, tables_apart
from ensemble_platform.governance.reports import (
    ENSEMBLE,
    ReportContext,
    agreement_document,
    calibration_data,
    calibration_document,
    fairness_document,
)
from ensemble_platform.policy import DriftPolicy, FairnessPolicy
from ensemble_platform.settings import PlatformPaths

# The title a payload sets: built by concatenation, so the text "pwned-by-data" is never in a
# page's source, only in a DOM where the payload ran.
TITLE_SET = "document.title='pwned'+'-by-data'"
PWNED = "pwned-by-data"
SCRIPT = f"</script><script>{TITLE_SET}</script>"
IMG = f'<img src=x onerror="{TITLE_SET}">'
HOSTILE = [SCRIPT, IMG, "<svg onload=alert(1)>", "&lt;script&gt;x", "[click](javascript:alert(1))", "a|b\\"]

CONTEXT = ReportContext("credit_slice", "1.0.0", "c" * 64, 240)
N = 240


# --- what "inert" means -------------------------------------------------------------------------

class _Tags(HTMLParser):
    """Every element and attribute a browser would build from the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def assert_inert_html(html: str) -> None:
    for tag, attrs in _tags(html):
        assert tag not in ("script", "svg", "iframe", "object", "embed"), (tag, attrs)
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "img":  # only our figures: embedded PNGs (HTML) or the PNG files beside the Markdown
            src = attrs.get("src") or ""
            assert src.startswith("data:image/png;base64,") or (src.startswith("figures/") and src.endswith(".png")), attrs
        if tag == "a":
            assert not (attrs.get("href") or "").lower().startswith(("javascript:", "data:", "vbscript:")), attrs


# A renderer that passes raw HTML through (as some Markdown viewers do): the Markdown itself must be inert.
_PERMISSIVE = MarkdownIt("commonmark", {"html": True}).enable("table")


def assert_inert_markdown(markdown: str) -> None:
    lowered = markdown.lower()
    assert "<script" not in lowered and "<img" not in lowered and "<svg" not in lowered
    assert "](javascript:" not in lowered
    assert_inert_html(_PERMISSIVE.render(markdown))


def assert_inert(document: ReportDocument) -> None:
    assert_inert_markdown(document.markdown())
    assert_inert_markdown(document.markdown(figure_dir=None))
    html = document.html()
    assert_inert_html(html)
    assert "<script" not in html.lower() and "onerror=\"" not in html


# --- Markdown escaping -----------------------------------------------------------------------------

def test_cells_and_text_from_the_data_are_inert_and_normal_text_is_unchanged():
    for value in ["married", "no_rec", "< 28", "28 – 35", ">= 50", "failing: ['Age']", "R&D", "p<0.05",
                  "hist_gradient_boosting", "**ensemble**", "`abc`", "2024-01-01T00:00:00Z"]:
        assert fmt(value) == value and md_text(value) == value
    assert fmt("a|b") == "a\\|b" and fmt("line\nbreak") == "line break"
    assert fmt("<script>x</script>") == "&lt;script>x&lt;/script>"
    assert fmt("&lt;b&gt;") == "&amp;lt;b&amp;gt;"  # shown as typed, not decoded into markup
    assert fmt("[x](javascript:alert(1))") == "[x]\\(javascript:alert(1))"
    table = md_table([IMG, "v"], [[v, 1.0] for v in HOSTILE])
    assert_inert_markdown(table)
    rendered = MarkdownIt("commonmark", {"html": False}).enable("table").render(table)
    # Each hostile value stays in its own cell: no pipe or trailing backslash splits or merges cells.
    assert rendered.count("<tr>") == len(HOSTILE) + 1 and rendered.count("<td>") == 2 * len(HOSTILE)


# --- our reports with hostile values in every text position ---------------------------------------

def _hostile_members() -> list[str]:
    return [f"member {IMG}", f"member {SCRIPT}", "plain_member"]


def _arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=N) < 0.4).astype(int)
    P = np.clip(0.3 * y[:, None] + rng.uniform(0.05, 0.7, size=(N, 3)), 0.01, 0.99)
    return y, P, P.mean(axis=1)


def _groups() -> pd.Series:
    return pd.Series([HOSTILE[i % 4] for i in range(N)])


def test_fairness_report_is_inert():
    y, P, ensemble = _arrays()
    members = dict(zip(_hostile_members(), P.T))
    numbers = fairness_report(y, {ENSEMBLE: ensemble, **members}, {f"attr {SCRIPT}": _groups(), IMG: _groups()},
                              FairnessPolicy(min_group_size=10, min_group_class_count=2))
    data = {**CONTEXT.header(), "binning": {}, **numbers}
    assert_inert(fairness_document(data, CONTEXT))


def test_agreement_report_is_inert():
    y, P, ensemble = _arrays(1)
    numbers = agreement_report(P, _hostile_members(), y, ensemble, 0.6, 0.5,
                               {f"column {IMG}": _groups(), SCRIPT: _groups()}, min_segment_rows=10)
    assert_inert(agreement_document({**CONTEXT.header(), **numbers}, CONTEXT))


def _calibration(members: dict[str, np.ndarray], y: np.ndarray, ensemble: np.ndarray):
    choice = select_calibrator(ensemble, y, np.arange(N) % 3)
    return calibration_data(CONTEXT, y, ensemble, choice.calibrator.transform(ensemble), members, choice, 10)


def test_calibration_report_is_inert():
    y, P, ensemble = _arrays(2)
    data = _calibration(dict(zip(_hostile_members(), P.T)), y, ensemble)
    assert_inert(calibration_document(data, CONTEXT))


def test_model_card_is_inert(tmp_path):
    y, P, ensemble = _arrays(3)
    names = _hostile_members()
    members = dict(zip(names, P.T))
    metrics = {k: 0.5 for k in METRIC_NAMES}
    config = EnsembleConfig(dataset="credit_slice", version="1.0.0", strategy="soft_average",
                            members=tuple(MemberRef(name=n, family="logistic_regression", registered_model=f"rm {IMG}",
                                                    version="1", run_id="r" * 32) for n in names))
    spec = DatasetSpec(name="credit_slice", source=f"data {IMG}.csv", target=f"Status {SCRIPT}",
                       positive_label=f"bad {IMG}", sensitive=(f"attr {SCRIPT}",),
                       intended_use=f"Use {IMG} with care.", limitations=SCRIPT)
    validation = {
        "lineage": {"holdout_rows": N, "train_rows": 3 * N, "folds": 3, "data_hash": "d", "train_hash": "t",
                    "holdout_hash": "h"},
        "members": {n: metrics for n in names}, "ensemble": metrics, "best_member": names[0],
        "lift_over_best_member": {"roc_auc": 0.01, "log_loss": 0.01}, "selection": {"folds": 3},
    }
    fairness = {**CONTEXT.header(), "binning": {}, **fairness_report(
        y, {ENSEMBLE: ensemble, **members}, {f"attr {SCRIPT}": _groups()}, FairnessPolicy(min_group_size=10))}
    agreement = {**CONTEXT.header(), **agreement_report(P, names, y, ensemble, 0.6, 0.5, {IMG: _groups()})}
    gates = {"gates": [{"name": f"gate {IMG}", "threshold": 0.1, "value": 0.2, "passed": False, "waivable": True,
                        "detail": f"failing: [{SCRIPT!r}]"}]}
    approvals = [{"seq": 1, "decision": "approve", "reviewer": f"bob {IMG}", "decided_at": "2024-01-01",
                  "waived": [f"gate {IMG}"], "note": f"ok {SCRIPT} [x](javascript:alert(1))",
                  "config_hash": config.config_hash}]
    # Read back from JSON under the home when the card is rebuilt (on approve): editable, so data too.
    calibration = _calibration(members, y, ensemble)
    calibration["headline"]["calibrator"] = IMG
    fairness["summary"] = {**fairness["summary"], "ensemble_worst_status": SCRIPT, "worst_status": IMG}
    inputs = ModelCardInputs(
        config=config, spec=spec,
        members=[MemberEntry(n, "logistic_regression", f"rm {IMG}", "1", "r" * 32, {"C": SCRIPT}) for n in names],
        validation=validation, calibration=calibration,
        fairness=fairness, agreement=agreement,
        data_validation={"success": True, "successful": 1, "evaluated": 1},
        report_files=REPORT_FILES, gates=gates, approvals=approvals)
    assert_inert(model_card(inputs))


def test_performance_page_is_inert(tmp_path):
    history = PerformanceHistory(PlatformPaths.from_env(tmp_path / "home"), "credit_slice")
    metrics = {"rows": 50, "positive_rate": 0.3, "accuracy": 0.8, "log_loss": 0.5, "brier": 0.2, "roc_auc": 0.8}
    for i, batch in enumerate(["week-1", f"week {IMG}"]):
        history.record({"batch_id": batch.replace("/", "_"), "received_at": f"2024-01-0{i + 1} {SCRIPT}",
                        "scored_by": f"1.0.0 {IMG}",
                        "performance": {"ensemble": metrics, **{m: metrics for m in _hostile_members()}}})
    paths = history.publish()
    assert_inert_markdown(paths["markdown"].read_text())
    assert_inert_html(paths["html"].read_text())


def test_performance_page_puts_each_members_accuracy_under_its_name(tmp_path):
    """Batches scored by versions with different members: each accuracy sits in its member's column (the
    header was the last batch's members, each row its own members in order)."""
    history = PerformanceHistory(PlatformPaths.from_env(tmp_path / "home"), "credit_slice")
    base = {"rows": 50, "positive_rate": 0.3, "log_loss": 0.5, "brier": 0.2, "roc_auc": 0.8}
    for day, members in (("1", {"glm": 0.61, "rf": 0.72}), ("2", {"rf": 0.73, "xgb": 0.84})):
        history.record({"batch_id": f"b{day}", "received_at": f"2024-01-0{day}", "scored_by": "1.0.0",
                        "performance": {"ensemble": {**base, "accuracy": 0.8},
                                        **{m: {**base, "accuracy": a} for m, a in members.items()}}})
    text = history.publish()["markdown"].read_text()
    assert "| batch | glm | rf | xgb |" in text
    assert "| b1 | 0.610 | 0.720 | — |" in text and "| b2 | — | 0.730 | 0.840 |" in text


# --- Evidently's drift HTML --------------------------------------------------------------------------

NUMERIC_COLUMN = f"income {IMG}"
CATEGORICAL_COLUMN = f"job {SCRIPT}"


def _drift_frames(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, FeatureSchema]:
    rng = np.random.default_rng(seed)
    categories = ["fixed", SCRIPT, IMG, "a&b", "＜already fullwidth＞"]

    def frame(shift: float) -> pd.DataFrame:
        return pd.DataFrame({NUMERIC_COLUMN: rng.normal(shift, 1, n), "plain": rng.normal(0, 1, n),
                             CATEGORICAL_COLUMN: rng.choice(categories, n),
                             "Status": rng.choice(["good", SCRIPT], n)})

    return frame(0.0), frame(1.0), FeatureSchema((NUMERIC_COLUMN, "plain"), (CATEGORICAL_COLUMN,))


@pytest.fixture(scope="module")
def drift_html(tmp_path_factory) -> dict[str, Path]:
    reference, current, schema = _drift_frames()
    snapshots, summary = drift_report(DriftInputs(
        reference, current, schema, "Status", reference_prediction=pd.Series(np.linspace(0, 1, 300)),
        current_prediction=pd.Series(np.linspace(0.5, 1, 300))), DriftPolicy())
    # The summary names the columns as they are in the data, and found the shifted one.
    assert set(summary["columns"]) == {NUMERIC_COLUMN, "plain", CATEGORICAL_COLUMN}
    assert NUMERIC_COLUMN in summary["drifted_columns"] and summary["target"] is not None
    directory = tmp_path_factory.mktemp("drift")
    paths = {}
    for name, snapshot in snapshots.items():
        paths[name] = directory / f"{name}_drift.html"
        snapshot.save_html(str(paths[name]))
        snapshot.save_json(str(directory / f"{name}_drift.json"))
    return paths


def test_evidently_html_carries_no_markup_from_the_data(drift_html):
    html = drift_html["data"].read_text(encoding="utf-8")
    assert "income" in html and "job" in html  # the columns are there, under their safe names
    for payload in (SCRIPT, IMG, "</script><script>", "<img src=x", "onerror=\"document", "a&b"):
        assert payload not in html
    # The category value is there, with fullwidth lookalikes (JSON-escaped by Evidently).
    assert "\\uff1c/script\\uff1e\\uff1cscript\\uff1e" in html
    assert drift_html["prediction"].is_file()


def test_safe_labels_are_one_to_one_and_leave_clean_text_alone():
    mapping = safe_labels(["fixed", "<a>", "＜a＞", "a&b"])
    assert mapping["fixed"] == "fixed" and mapping["＜a＞"] == "＜a＞"
    assert len(set(mapping.values())) == 4 and not any(c in v for v in mapping.values() for c in "<>&")


def test_evidently_html_is_escaped_even_when_the_data_reaches_it_raw():
    """The second line of defence alone: Evidently run on the raw hostile values, then escaped."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference, current, schema = _drift_frames(200)
    definition = DataDefinition(numerical_columns=list(schema.numeric), categorical_columns=list(schema.categorical))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset(columns=schema.features)]).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition))
    raw = snapshot.get_html_str(as_iframe=False)
    assert SCRIPT in raw  # Evidently embeds it as is: the reason for all this
    escaped = escape_embedded_data(raw)
    assert SCRIPT not in escaped and "</script><script>document" not in escaped
    assert "\\u003c/script\\u003e\\u003cscript\\u003e" in escaped
    assert escaped.count("<script") == raw.count("<script") - raw.count(SCRIPT)
    with pytest.raises(ValueError, match="Evidently"):
        escape_embedded_data("<html><body>no dashboard</body></html>")


# --- in a real browser -------------------------------------------------------------------------------

def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def dump_dom(tmp_path_factory):
    browser = _chromium()
    if browser is None:
        if os.environ.get("ENSEMBLE_PLATFORM_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium found but ENSEMBLE_PLATFORM_REQUIRE_BROWSER=1 (CI installs it)")
        pytest.skip("no Chromium on this machine and it could not be installed (make browser)")
    profile = tmp_path_factory.mktemp("profile")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--hide-scrollbars"]

    def dump(path: Path, *extra: str) -> str:
        return subprocess.run([*flags, *extra, "--dump-dom", path.as_uri()], capture_output=True, text=True,
                              timeout=120, check=True).stdout

    return dump


def test_the_browser_runs_an_unescaped_payload(dump_dom, tmp_path):
    """Control: in this browser setup the payload does run when nothing escapes it."""
    page = tmp_path / "control.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>t</title><script>var x = {{\"v\": \"{SCRIPT}\"}};"
                    "</script></head><body>x</body></html>")
    assert f"<title>{PWNED}</title>" in dump_dom(page)


def test_evidently_drift_html_does_not_run_data_in_a_browser(dump_dom, drift_html):
    dom = dump_dom(drift_html["data"])
    assert PWNED not in dom
    assert len(dom) > 100_000 and "root_metric_" in dom  # the dashboard did render


def test_our_html_report_does_not_run_data_in_a_browser(dump_dom, tmp_path):
    y, P, ensemble = _arrays()
    numbers = fairness_report(y, {ENSEMBLE: ensemble, **dict(zip(_hostile_members(), P.T))},
                              {f"attr {SCRIPT}": _groups()}, FairnessPolicy(min_group_size=10))
    page = tmp_path / "fairness.html"
    page.write_text(fairness_document({**CONTEXT.header(), "binning": {}, **numbers},
                                      CONTEXT).html())
    dom = dump_dom(page)
    assert PWNED not in dom and "<table>" in dom and "By attr" in dom


# --- what a reader sees: every table a table, every figure complete, counts that say what they count -----

_DELIMITER = re.compile(r"^\|(---\|)+$", re.MULTILINE)


def _plain_documents() -> dict[str, ReportDocument]:
    y, P, ensemble = _arrays(2)
    members = dict(zip(["logistic", "forest", "boosting"], P.T))
    groups = pd.Series(["a"] * 150 + ["b"] * 80 + ["c"] * 10)
    fairness = fairness_report(y, {ENSEMBLE: ensemble, **members}, {"region": groups}, FairnessPolicy())
    agreement = agreement_report(P, list(members), y, ensemble, 0.6, 0.5, {"region": groups}, min_segment_rows=10)
    return {
        "fairness": fairness_document({**CONTEXT.header(), "binning": {}, **fairness}, CONTEXT),
        "agreement": agreement_document({**CONTEXT.header(), **agreement}, CONTEXT),
        "calibration": calibration_document(_calibration(members, y, ensemble), CONTEXT),
    }


@pytest.mark.parametrize("name", ["fairness", "agreement", "calibration"])
def test_every_markdown_table_of_a_report_renders_as_a_table(name):
    document = _plain_documents()[name]
    markdown, html = document.markdown(), document.html()
    tables = len(_DELIMITER.findall(markdown))
    assert tables >= 2 and html.count("<table>") == tables
    rendered = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    assert rendered.count("<table>") == tables  # the .md file too, in any CommonMark + tables renderer
    assert "<p>|" not in html and "\n|" not in re.sub(r"<table>.*?</table>", "", html, flags=re.DOTALL)
    # Renderers stricter than markdown-it (a table may not interrupt a paragraph) need a blank line before it.
    lines = markdown.splitlines()
    assert all(lines[i - 2] == "" for i, line in enumerate(lines) if _DELIMITER.fullmatch(line))


def test_a_table_written_on_the_line_after_its_sentence_still_renders():
    body = "Coefficient of variation per row:\n" + md_table(["mean", "p50"], [[0.25, 0.2]])
    document = ReportDocument("T", "s", [Section("Spread", body)])
    assert "<table>" in document.html() and "row:\n\n| mean" in document.markdown()
    assert tables_apart("text\n\n" + md_table(["a"], [[1]])) == "text\n\n" + md_table(["a"], [[1]])  # unchanged
    assert tables_apart("a | b\nnot a table") == "a | b\nnot a table"


def test_the_fairness_figure_plots_the_demographic_parity_ratio():
    def gaps(ratio: float) -> dict:
        row = {"demographic_parity_difference": {"value": 0.1, "status": "pass"},
               "demographic_parity_ratio": {"value": ratio, "status": "fail" if ratio < 0.6 else "pass"}}
        return {ENSEMBLE: row, "member": row}

    assert fairness_gap_figure("Age", gaps(0.4)).png != fairness_gap_figure("Age", gaps(0.9)).png


def test_figures_draw_names_with_dollar_signs_as_text():
    """A column or member name with two `$` was parsed by matplotlib as a formula: an unknown command in
    it raised, and the fairness, performance and production reports failed."""
    from ensemble_platform.governance.figures import performance_history_figure

    row = {"demographic_parity_difference": {"value": 0.1, "status": "pass"}}
    assert fairness_gap_figure("spend_$\\foo$", {ENSEMBLE: row, "rf_$\\bar$": row}).png
    metrics = {"rows": 50, "positive_rate": 0.3, "accuracy": 0.8, "log_loss": 0.5, "brier": 0.2, "roc_auc": 0.8}
    history = [{"batch_id": "b1", "received_at": "2024-01-01", "scored_by": "1.0.0",
                "performance": {"ensemble": metrics, "glm_$\\baz$": metrics}}]
    assert performance_history_figure(history).png


def test_figures_whose_names_meet_are_all_kept():
    """Two attributes whose names slug alike ("Marital status", "Marital_status") wrote one PNG over the other."""
    row = {"demographic_parity_difference": {"value": 0.1, "status": "pass"}}
    first = fairness_gap_figure("Marital status", {ENSEMBLE: row})
    second = fairness_gap_figure("Marital_status", {ENSEMBLE: row, "member": row})
    document = ReportDocument("T", "s", [Section("a", "x", [first]), Section("b", "y", [second])])
    assert [f.name for f in document.figures()] == ["fairness_gaps_marital_status", "fairness_gaps_marital_status_2"]
    assert "figures/fairness_gaps_marital_status_2.png" in document.markdown()


def test_thin_groups_are_counted_as_groups():
    document = _plain_documents()["fairness"]
    summary = document.sections[0].body
    by_region = next(s for s in document.sections if s.heading == "By region").body
    judged_column = [line.rsplit("|", 2)[-2].strip() for line in by_region.splitlines()
                     if line.startswith("| ") and not line.startswith("| group")][:3]
    thin = sum(value != "yes" for value in judged_column)
    assert thin == 1  # group c: 10 rows, under min_group_size 30
    assert f"Statistically thin groups (shown, not judged): region {thin} of 3." in summary


def test_the_calibration_report_fits_a_1280_pixel_window(dump_dom, tmp_path):
    """No table is wider than the page's text column (tables scroll inside it if they must)."""
    y, P, ensemble = _arrays(3)
    html = calibration_document(_calibration(dict(zip(["logistic_regression", "hist_gradient_boosting",
                                                       "k_nearest_neighbours"], P.T)), y, ensemble), CONTEXT).html()
    probe = ("<script>window.addEventListener('load', () => { const body = document.body;"
             " const right = body.getBoundingClientRect().right - parseFloat(getComputedStyle(body).paddingRight);"
             " let over = 0, scrolled = 0; for (const t of document.querySelectorAll('table')) {"
             " over = Math.max(over, t.getBoundingClientRect().right - right);"
             " scrolled = Math.max(scrolled, t.scrollWidth - t.clientWidth); }"
             " document.title = 'over ' + Math.round(over) + ' scrolled ' + scrolled; });</script>")
    page = tmp_path / "calibration.html"
    page.write_text(html.replace("</body>", probe + "</body>"))
    dom = dump_dom(page, "--window-size=1280,900")
    assert "<title>over 0 scrolled 0</title>" in dom or re.search(r"<title>over -\d+ scrolled 0</title>", dom), \
        re.findall(r"<title>[^<]*", dom)
