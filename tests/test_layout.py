"""The layout the README draws is the layout the code has: stages import one way, no cycles."""

import sys

from tests.conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
import import_graph  # noqa: E402


def test_the_readme_import_graph_is_current_and_acyclic(capsys):
    assert import_graph.main(["--check"]) == 0, capsys.readouterr().out


def test_the_cycle_check_can_fail():
    assert import_graph.cycles({"data": {"models"}, "models": {"data"}})
    assert not import_graph.cycles({"models": {"data"}, "data": set()})


def test_lower_stages_do_not_reach_into_training():
    graph = import_graph.stage_graph()
    for stage in ("data", "models", "metrics", "features", "losses", "inference", "serving", "tracking"):
        assert "training" not in graph.get(stage, set()), stage
    assert "models" not in graph["data"] and "features" not in graph["data"]
