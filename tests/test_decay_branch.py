"""The budget search under WSD: decayed branches, what a stage stopped there would have ended with.

Each test fails without the branch: a dropped branch must leave no trace, a kept one must be the WSD run of its
length, and the ledger must count only the kept steps."""

import copy

import pytest
import torch

from comptlib import Chain
from comptlib.callbacks import Callback
from comptlib.checkpoint import weights_hash
from comptlib.families.vit import build_vit
from comptlib.settings import Optim

WSD = Optim(lr=3e-3, schedule="wsd", decay=0.2, warmup=0.0, grown_warmup=0.0)
COMMON = {"unit": "steps", "optim": WSD, "progress": False, "eval_every": 8}


def models() -> list:
    torch.manual_seed(0)
    return [build_vit(16, 1), build_vit(32, 2)]


class Rates(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def watch(self, stage, role):
        if role == "student" and stage.index == 1:
            self.seen.append((stage.step, stage.opt.param_groups[0]["lr"]))


def test_a_branch_that_falls_short_leaves_no_trace(digits) -> None:
    train, val = digits
    plain = Chain(models(), budgets=[20, 40], **COMMON).fit(train, val)
    searched = Chain(models(), budgets=[20, 40], targets=[None, 1.01], **COMMON).fit(train, val)
    assert [weights_hash(m) for m in searched.models_] == [weights_hash(m) for m in plain.models_]
    record = searched.history_[1]
    assert record["steps"] == 40 and record["reached"] is False
    # branches at steps 8, 16, 24 (the decay starts at 32) of 2, 4, 6 steps: the search's cost, not the stage's
    assert record["branch_steps"] == 2 + 4 + 6 and "branch_steps" not in plain.history_[1]
    assert searched.ledger_.stages[1].samples == plain.ledger_.stages[1].samples
    assert [(v["step"], v.get("decay_from")) for v in record["val"]] == [
        (0, None),
        (10, 8),
        (20, 16),
        (30, 24),
        (32, None),
        (40, None),
    ]


def test_the_next_branch_waits_until_the_stage_trained_as_many_steps_again(digits) -> None:
    train, val = digits
    searched = Chain(models(), budgets=[20, 40], targets=[None, 1.01], **COMMON | {"eval_every": 2}).fit(train, val)
    record = searched.history_[1]
    starts = {v["decay_from"]: v["step"] - v["decay_from"] for v in record["val"] if "decay_from" in v}
    # a quarter of the steps so far (at least 1), then no branch before the stage has trained that many again
    assert starts == {2: 1, 4: 1, 6: 2, 8: 2, 10: 2, 12: 3, 16: 4, 20: 5, 26: 6}
    assert record["branch_steps"] == sum(starts.values()) < record["steps"]
    assert [v["step"] for v in record["val"] if "decay_from" not in v] == [
        0,
        14,
        18,
        22,
        24,
        28,
        30,
        32,
        34,
        36,
        38,
        40,
    ]


def test_a_kept_branch_is_the_wsd_stage_of_its_length(digits) -> None:
    train, val = digits
    rates = Rates()
    searched = Chain(models(), budgets=[20, 200], targets=[None, 0.0], callbacks=[rates], **COMMON).fit(train, val)
    record = searched.history_[1]
    # reached at the first branch: 8 steps at the peak, then 2 decaying (a quarter of them, decay 0.2 of 10)
    assert record["steps"] == 10 and record["reached"] is True and record["budget"] == 200
    assert "branch_steps" not in record and searched.ledger_.stages[1].samples == 10 * record["batch_size"]
    assert [lr for _, lr in rates.seen] == pytest.approx([3e-3] * 8 + [2e-3, 1e-3])
    told = Chain(models(), budgets=[20, 10], **COMMON).fit(train, val)  # a WSD stage told its budget of 10
    assert weights_hash(searched.models_[1]) == weights_hash(told.models_[1])
    assert record["val"][-1]["accuracy"] == told.history_[1]["val"][-1]["accuracy"]


def test_pre_decay_growth_after_a_kept_branch_starts_where_the_branch_began(digits) -> None:
    train, val = digits
    torch.manual_seed(0)
    three = [build_vit(16, 1), build_vit(32, 1), build_vit(32, 2)]
    stages = {"budgets": [20, 200, 4], "grow_from": "pre_decay"}
    searched = Chain(three, targets=[None, 0.0, None], **COMMON | stages).fit(train, val)
    assert searched.history_[1]["steps"] == 10
    # the same middle model cut at step 8, where its branch began, is what the last one grows from
    stopped = Chain(three[:2], budgets=[20, 200], callbacks=[StopAt(8)], **COMMON | {"grow_from": "pre_decay"})
    stopped.fit(train, val)
    grown = searched._growers(searched._family())[1].grow(stopped.models_[1], copy.deepcopy(three[2]))
    watch = Start()
    Chain(three, targets=[None, 0.0, None], callbacks=[watch], **COMMON | stages).fit(train, val)
    assert watch.hashes[2] == weights_hash(grown)


class Start(Callback):
    def __init__(self) -> None:
        self.hashes: dict[int, str] = {}

    def on_stage_start(self, stage) -> None:
        self.hashes[stage.index] = weights_hash(stage.student)


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, stage) -> None:
        stage.stop = stage.stop or (stage.index == 1 and stage.step == self.step)


class Crash(Callback):
    def on_step_end(self, stage) -> None:
        if (stage.index, stage.step) == (1, 20):
            raise RuntimeError("killed")


def test_a_search_resumed_mid_stage_ends_as_one_uninterrupted(digits, tmp_path) -> None:
    train, val = digits
    search = {"budgets": [20, 40], "targets": [None, 1.01], **COMMON}
    reference = Chain(models(), **search).fit(train, val)
    run = {"checkpoint_dir": str(tmp_path), "checkpoint_every": 8}  # saved at step 16, after its branch was undone
    with pytest.raises(RuntimeError, match="killed"):
        Chain(models(), callbacks=[Crash()], **search | run).fit(train, val)
    resumed = Chain(models(), resume=True, **search | run).fit(train, val)
    assert [weights_hash(m) for m in resumed.models_] == [weights_hash(m) for m in reference.models_]
    assert resumed.history_[1]["branch_steps"] == reference.history_[1]["branch_steps"] == 12
