"""The benchmark harness end to end: its quick suite (tiny budgets, every ladder and ablation) is CI's smoke test."""

import json

import pytest
import torch

from benchmarks.report import END, START, write_report
from benchmarks.run import LADDERS, SEARCH_ABLATIONS, SUITES, ablations, main


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
    assert set(results["ladders"]) == set(SUITES["quick"].ladders) >= {"fashion-vit-3", "fashion-resnet-3"}
    assert "llama-data-limited" in results["ladders"]  # the LM regimes' stdlib split
    assert results["machine"]["cpu_count"]
    for name, ladder in results["ladders"].items():
        assert ladder["commands"] == [
            f"python -m benchmarks.run --suite quick --out {quick / 'out'} --docs {quick / 'docs'}"
        ]
        runs = ladder["seeds"]["0"]
        sizes = len(LADDERS[name].sizes)
        assert len(runs["alone"]) == len(runs["chain"]) == len(runs["search"]) == sizes
        assert runs["chain_report"]["acceleration_ratio"] > 1
        same = ("metric", "steps", "flops", "curve")  # the chain grows from its first model's baseline itself
        assert [runs["chain"][0][k] for k in same] == [runs["alone"][0][k] for k in same]
        assert ladder["search_schedule"] == "wsd"  # the search judges decayed branches
        assert ladder["date"] == results["machine"]["date"]  # each ladder is dated: results files merge days
        for cap, stage in zip(ladder["baselines"][1:], runs["search"][1:]):  # at its target or its baseline's budget
            assert stage["steps"] == cap or stage["reached"]
            assert stage["branch_steps"] <= stage["steps"]  # the dropped branches cost at most the stage
        assert (quick / "out" / f"{name}.png").stat().st_size > 10_000
    # A size trained alone with one seed is one run, shared by every ladder that has it.
    vit3, vit4 = (results["ladders"][k]["seeds"]["0"]["alone"] for k in ("vit-3", "vit-4"))
    assert vit3 == vit4[1:]


def test_fashion_baselines_stop_at_their_knee_and_the_chain_takes_its_budgets_from_them(quick) -> None:
    results = json.loads((quick / "out" / "results.json").read_text())
    ladder = results["ladders"]["fashion-vit-3"]
    assert list(ladder["knees"]) == list(LADDERS["fashion-vit-3"].sizes)
    for knee, baseline, alone in zip(ladder["knees"].values(), ladder["baselines"], ladder["seeds"]["0"]["alone"]):
        assert knee["budgets"][0] == 3 and knee["knee"] == baseline == alone["steps"]
        assert len(knee["metrics"]) == len(knee["budgets"]) and knee["budgets"] in ([3], [3, 6])
    assert ladder["budgets"][0] == ladder["baselines"][0]
    assert (quick / "out" / "fashion-vit-3-knee.png").exists() and list((quick / "out" / "alone").glob("*.json"))
    rows = ladder["seeds"]["0"]["ablations"]
    paper = "transfer: feature MSE x500, constant (the paper's)"
    assert {"schedule: wsd, grow from pre-decay", "shrink 0.5, perturb 0.01", paper} <= set(rows)
    assert "transfer: none" not in rows  # the image classifiers' default: the "default" row
    assert "init: none (distil only)" not in rows and "no middle model" in rows
    searches = ladder["seeds"]["0"]["search_ablations"]  # the budget search again, a lower LR after growth
    assert set(searches) == set(SEARCH_ABLATIONS)
    for entry in searches.values():
        assert len(entry["search"]) == len(ladder["sizes"]) and entry["search_report"]["acceleration_ratio"] > 1
        for cap, stage in zip(ladder["baselines"][1:], entry["search"][1:]):
            assert stage["steps"] == cap or stage["reached"]


def test_ablations_cover_init_transfer_lr_and_the_middle_model(quick) -> None:
    results = json.loads((quick / "out" / "results.json").read_text())
    for name in ("vit-3", "llama-3"):
        rows = results["ladders"][name]["seeds"]["0"]["ablations"]
        assert {"default", "init: compt (paper's warm start)", "init: none (distil only)"} <= set(rows)
        # each family's default transfer is the "default" row: none for the ViT, a decaying logit KL for the LM
        assert ("transfer: none" in rows) == (name == "llama-3")
        assert "transfer: feature MSE x500, constant (the paper's)" in rows
        assert "grown LR x1, re-warm" not in rows  # the defaults: the "default" row
        assert {"grown LR x0.5, re-warm", "grown LR x0.25, no re-warm"} <= set(rows)
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
    date = json.loads((quick / "out" / "results.json").read_text())["machine"]["date"]
    assert f"| fashion-vit-3 | {date} | 3 |" in page
    for name in SUITES["quick"].ladders:
        assert f"### {name}:" in page and (quick / "docs" / "img" / "benchmarks" / f"{name}.png").exists()
    assert "Baselines at their knee" in page and "### Ablations on fashion-vit-3" in page
    assert "### Budget search under other settings on fashion-vit-3" in page and "| grown LR x0.25 | 0 |" in page
    assert "### Ablations on vit-3" in page and "### Prepending a smaller model: vit-4 prepends 16x2" in page


def test_a_page_without_markers_is_refused_and_kept(quick, tmp_path) -> None:
    results = json.loads((quick / "out" / "results.json").read_text())
    (tmp_path / "benchmarks.md").write_text("# mine\n")
    with pytest.raises(ValueError, match="markers"):
        write_report(results, quick / "out", docs=tmp_path)
    assert (tmp_path / "benchmarks.md").read_text() == "# mine\n"


def test_pieces_merge_by_seed_and_part() -> None:
    from benchmarks.run import _merge_seeds

    plan = {"budgets": [8, 2], "baselines": [8, 8], "targets": [0.5, 0.6], "search_schedule": "wsd"}
    old = plan | {"seeds": {"0": {"alone": "a0", "chain": "c0"}, "1": {"alone": "a1", "chain": "c1"}}}
    old |= {"commands": ["run 0", "run 1"]}
    new = plan | {"seeds": {1: {"alone": "a1", "ablations": "x1"}}, "commands": ["ablate 1"]}
    merged = _merge_seeds(old, new)
    assert merged["seeds"] == {0: {"alone": "a0", "chain": "c0"}, 1: {"alone": "a1", "chain": "c1", "ablations": "x1"}}
    assert merged["commands"] == ["run 0", "run 1", "ablate 1"] == _merge_seeds(merged, new)["commands"]
    other = _merge_seeds(old | {"baselines": [8, 16]}, new)  # other budgets: the earlier seeds dropped
    assert other["seeds"] == {1: {"alone": "a1", "ablations": "x1"}} and other["commands"] == ["ablate 1"]
    cosine = old | {"search_schedule": None}  # an earlier search that judged the stage mid-schedule
    assert _merge_seeds(cosine, new)["seeds"] == {1: {"alone": "a1", "ablations": "x1"}}


def test_pieces_run_in_parallel_folders_merge_into_one_results_file(tmp_path) -> None:
    plan = {"budgets": [8, 2], "baselines": [8, 8], "targets": [0.5, 0.6], "search_schedule": "wsd"}
    for seed in (0, 1):
        piece = {"settings": {"ladders": ["x"]}, "ladders": {"x": plan | {"commands": [f"piece {seed}"]}}}
        piece["ladders"]["x"]["seeds"] = {str(seed): {"chain": f"c{seed}"}}
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "results.json").write_text(json.dumps(piece))
    main(
        [
            "--out",
            str(tmp_path / "all"),
            "--merge-from",
            str(tmp_path / "s0/results.json"),
            str(tmp_path / "s1/results.json"),
        ]
    )
    merged = json.loads((tmp_path / "all" / "results.json").read_text())
    assert merged["ladders"]["x"]["seeds"] == {"0": {"chain": "c0"}, "1": {"chain": "c1"}}
    assert merged["ladders"]["x"]["commands"] == ["piece 0", "piece 1"] and merged["settings"]["ladders"] == ["x"]


def test_the_lm_regimes_share_one_held_out_tail_and_the_compute_limited_one_reads_no_window_twice() -> None:
    limited, unlimited = LADDERS["llama-data-limited"], LADDERS["llama-compute-limited"]
    (few, held_out), (many, same) = (
        ladder.loaders(16, train_size=ladder.train_size) for ladder in (limited, unlimited)
    )
    assert (
        torch.equal(held_out.dataset.columns["input_ids"], same.dataset.columns["input_ids"])
        and len(held_out.dataset) == 2048
    )
    assert len(few.dataset) == 8192 and torch.equal(
        few.dataset.columns["input_ids"], many.dataset.columns["input_ids"][:8192]
    )
    longest = unlimited.budgets[0] * 2**unlimited.knee * unlimited.batch_size
    assert len(many.dataset) >= longest  # the largest budget of the knee search is under one pass
    assert longest / len(few.dataset) > 9  # and over nine epochs of the data-limited corpus


def test_the_floor_grows_every_variant_from_the_first_model_alone(tmp_path) -> None:
    from benchmarks.floor import main as floor

    argv = ["--ladder", "llama-data-limited", "--steps", "1", "--seeds", "0", "--variants", "default,none"]
    result = floor([*argv, "--out", str(tmp_path)])
    runs = {
        v: json.loads((tmp_path / "floor" / f"llama-data-limited-1steps-seed0-{v}.json").read_text())
        for v in result["grown"]
    }
    for run in runs.values():  # the chain's first model is the run alone, not a retrained twin
        assert run["models"][0]["metric"] == result["alone"]["16x2"][0]
    assert runs["default"]["chain_flops"] > runs["none"]["chain_flops"]  # the LM's default transfer: teacher forwards
    saved = json.loads((tmp_path / "floor-llama-data-limited-1steps.json").read_text())
    assert saved["command"] == f"python -m benchmarks.floor {' '.join(argv)} --out {tmp_path}"


@pytest.mark.parametrize(
    ("higher", "grown", "verdict"),
    [(True, 0.80, "floor met"), (True, 0.70, "**below**"), (False, 0.70, "floor met"), (False, 0.80, "**below**")],
)
def test_the_floor_judges_by_the_metric_direction(higher: bool, grown: float, verdict: str) -> None:
    from benchmarks.floor import table

    result = {"alone": {"a": [0.5], "b": [0.74, 0.76]}, "grown": {"none": {"b": [grown, grown]}}}
    assert table(result, higher=higher).splitlines()[-1].endswith(f"{verdict}) |")
