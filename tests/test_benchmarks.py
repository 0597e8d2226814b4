"""The benchmark harness end to end: its quick suite (tiny budgets, every ladder and ablation) is CI's smoke test."""

import json

import pytest

from benchmarks.report import END, START, write_report
from benchmarks.run import LADDERS, ablations, main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    docs = root / "docs"
    docs.mkdir()
    (docs / "benchmarks.md").write_text(f"# Benchmarks\n\nintro\n\n{START}\nold results\n{END}\n\ndiscussion\n")
    main(["--suite", "quick", "--out", str(root / "out"), "--docs", str(docs)])
    return root


def test_every_ladder_runs_both_ways_with_a_budget_search(quick) -> None:
    results = json.loads((quick / "out" / "results.json").read_text())
    assert set(results["ladders"]) == set(LADDERS)
    assert results["machine"]["cpu_count"] and results["command"].startswith("python -m benchmarks.run --suite quick")
    for name, ladder in results["ladders"].items():
        runs = ladder["seeds"]["0"]
        sizes = len(LADDERS[name].sizes)
        assert len(runs["alone"]) == len(runs["chain"]) == len(runs["search"]) == sizes
        assert runs["chain_report"]["acceleration_ratio"] > 1
        cap = ladder["budgets"][0]
        for stage in runs["search"][1:]:  # a grown model stops at its target or at the cap
            assert stage["steps"] == cap or stage["reached"]
        assert (quick / "out" / f"{name}.png").stat().st_size > 10_000
    # A size trained alone with one seed is one run, shared by every ladder that has it.
    vit3, vit4 = (results["ladders"][k]["seeds"]["0"]["alone"] for k in ("vit-3", "vit-4"))
    assert vit3 == vit4[1:]


def test_ablations_cover_init_transfer_lr_and_the_middle_model(quick) -> None:
    results = json.loads((quick / "out" / "results.json").read_text())
    for name in ("vit-3", "llama-3"):
        rows = results["ladders"][name]["seeds"]["0"]["ablations"]
        assert {"default", "init: compt (paper's warm start)", "init: none (distil only)", "transfer: none"} <= set(rows)
        assert "grown LR x0.5, re-warm" not in rows  # the defaults: the "default" row
        assert {"grown LR x1, no re-warm", "grown LR x0.25, re-warm"} <= set(rows)
        assert [m["name"] for m in rows["no middle model"]["models"]] == [
            f"{LADDERS[name].recipe}-{s}" for s in LADDERS[name].sizes[::2]
        ]
    # The language models' default transfer is already a decaying logit KL: not run twice.
    assert "transfer: logit KL, decaying" not in ablations("decoder_lm")
    assert "transfer: logit KL, decaying" in ablations("vit")


def test_docs_page_keeps_its_prose_and_gets_tables_and_plots(quick) -> None:
    page = (quick / "docs" / "benchmarks.md").read_text()
    assert page.startswith("# Benchmarks\n\nintro\n\n" + START) and page.endswith(END + "\n\ndiscussion\n")
    assert "old results" not in page
    for name in LADDERS:
        assert f"### {name}:" in page and (quick / "docs" / "img" / "benchmarks" / f"{name}.png").exists()
    assert "### Ablations on vit-3" in page and "### Prepending a smaller model" in page


def test_a_page_without_markers_is_refused_and_kept(quick, tmp_path) -> None:
    results = json.loads((quick / "out" / "results.json").read_text())
    (tmp_path / "benchmarks.md").write_text("# mine\n")
    with pytest.raises(ValueError, match="markers"):
        write_report(results, quick / "out", docs=tmp_path)
    assert (tmp_path / "benchmarks.md").read_text() == "# mine\n"
