"""The growth-cost benchmark measures and tabulates (tiny models stand in for the real links)."""

from benchmarks import growth_cost
from comptlib.families.vit import build_vit


def test_each_mode_measures_time_and_memory_and_the_table_has_the_ratios(monkeypatch) -> None:
    monkeypatch.setitem(growth_cost.CASES, "tiny", (lambda: build_vit(16, 1), lambda: build_vit(32, 2), {}, "tiny vit"))
    runs = {mode: growth_cost.measure("tiny", mode) for mode in growth_cost.MODES}
    for run in runs.values():
        assert run["seconds"] > 0 and run["peak_bytes"] >= 0 and run["weight_bytes"] > 4 * run["params"] - 1
    table = growth_cost.table({"cases": {"tiny": runs}})
    assert table.count("\n") == 2 and "| tiny vit |" in table
