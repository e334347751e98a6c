"""`kerasurgery.model.budget`: the counting build's sum of weights and metric state."""

from __future__ import annotations

from pathlib import Path

import pytest

from kerasurgery.errors import ModelFileError
from kerasurgery.model import budget


def _compiled(metric: dict) -> dict:
    return {"class_name": "Custom", "config": {}, "compile_config": {"metrics": [metric]}}


def test_metric_state_is_counted_when_the_build_cannot_count_the_weights(monkeypatch):
    # Neither the config nor a counting build sizes the weights: the metrics'
    # state (an AUC of 4e7 thresholds: 2e8 entries) is still refused.
    monkeypatch.setattr(budget, "exact_weight_entries", lambda config: None)
    monkeypatch.setattr(budget, "built_weight_entries", lambda config, fmt, safe_mode: None)
    auc = {"class_name": "AUC", "config": {"num_thresholds": 40_000_000}}
    with pytest.raises(ModelFileError, match="declares weights of 200,000,000 entries"):
        budget.check_buildable(Path("m.keras"), _compiled(auc), "keras", 1000, safe_mode=True)


def test_metric_entries_counts_auc_and_iou_exactly():
    assert budget.metric_entries({"metrics": [{"class_name": "AUC", "config": {"num_thresholds": 7}}]}) == 35
    assert budget.metric_entries({"metrics": [{"class_name": "MeanIoU", "config": {"num_classes": 9}}]}) == 81
