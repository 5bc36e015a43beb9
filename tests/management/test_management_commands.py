"""Operator commands answer a bad argument with a usage error, before they start anything."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command


@pytest.mark.parametrize("nodes", ["0", "-3", "201", "four"])
def test_lab_up_refuses_a_node_count_the_lab_cannot_hold(nodes: str, settings, tmp_path) -> None:
    settings.NEOCLOUD_LAB_DIR = tmp_path / "lab"
    with pytest.raises(CommandError, match=f"the lab holds 1 to 200 nodes, not {nodes}"):
        call_command("lab", "up", "--nodes", nodes, "--no-enroll")
    assert not (tmp_path / "lab").exists()


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf", "soon"])
def test_scheduler_refuses_an_interval_that_is_not_a_positive_number(interval: str, db) -> None:
    with pytest.raises(CommandError, match=f"must be a positive number of seconds, not {interval}"):
        call_command("scheduler", "--once", "--no-power-sync", "--interval", interval)
