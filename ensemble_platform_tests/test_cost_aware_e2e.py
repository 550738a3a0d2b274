"""A spec with a `selection:` budget, end to end through the CLI demo (Dagster graph, MLflow registry,
validation, model card): the choice is made within the budget on the frontier and recorded."""

import json

import numpy as np

from ensemble_platform import cli
from ensemble_platform.ensemble.config import ConfigStore
from ensemble_platform.settings import PlatformPaths
from ensemble_platform_tests.conftest import write_spec


def test_selection_budget_end_to_end(tmp_path, credit_slice):
    spec_path = write_spec(tmp_path / "dataset", credit_slice,
                           selection={"objective": "log_loss", "max_cost_ratio": 3.0})
    home = tmp_path / "home"
    assert cli.main(["--home", str(home), "demo", "--dataset", str(spec_path)]) == 0
    paths = PlatformPaths.from_env(home)
    config = ConfigStore(paths.configs_dir("credit_slice")).load("1.0.0")
    assert config.selection is not None and config.selection.max_cost_ratio == 3.0
    assert set(config.member_costs) == {m.name for m in (*config.members, *config.pruned)}
    report_dir = paths.version_reports_dir("credit_slice", "1.0.0")
    report = json.loads((report_dir / "validation.json").read_text())
    frontier = report["selection"]["frontier"]
    assert {"cascade", "router"} <= set(frontier)
    assert frontier[config.strategy]["chosen"] and frontier[config.strategy]["eligible"]
    assert all(row["cost_ratio"] <= 3.0 * (1 + 1e-9) for row in frontier.values() if row["eligible"])
    assert config.expected_cost_per_row == frontier[config.strategy]["cost_per_row"]
    card = (report_dir / "model_card.md").read_text()
    assert "## Accuracy-cost frontier" in card and f"{config.strategy} **(chosen)**" in card
    assert np.isfinite(report["ensemble"]["log_loss"])
