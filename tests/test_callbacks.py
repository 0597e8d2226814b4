"""Hooks watch the stage loop; nested settings; a diverging stage stops with a clear error and writes no NaN."""

import json
import math

import pytest
import torch
from sklearn.base import clone

from comptlib import Chain, FeatureMSE
from comptlib.callbacks import Callback
from comptlib.errors import ComptError, DivergenceError
from comptlib.families.vit import build_vit
from comptlib.settings import Optim, Runtime


def family() -> list:
    torch.manual_seed(0)
    return [build_vit(16, 1), build_vit(32, 1)]


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple] = []
        self.stop_at = stop_at

    def on_fit_start(self, chain):
        self.events.append(("fit_start",))

    def on_stage_start(self, stage):
        self.events.append(("stage_start", stage.name))

    def on_evaluate(self, stage, metrics):
        self.events.append(("evaluate", stage.name, stage.step))

    def on_step_end(self, stage):
        self.events.append(("step", stage.name, stage.step))
        if stage.index == 1 and stage.step == self.stop_at:
            stage.stop = True

    def on_log(self, stage, entry):
        self.events.append(("log", stage.name, stage.step))

    def on_stage_end(self, stage):
        self.events.append(("stage_end", stage.name, stage.record["steps"]))

    def on_fit_end(self, chain):
        self.events.append(("fit_end",))


def test_a_user_callback_sees_every_point_and_can_stop_a_stage(digits) -> None:
    train, val = digits
    recorder = Recorder(stop_at=3)
    chain = Chain(family(), budgets=[12, 8], unit="steps", progress=False, callbacks=[recorder]).fit(train, val)
    events = recorder.events
    assert events[0] == ("fit_start",) and events[-1] == ("fit_end",)
    assert events[1] == ("stage_start", "vit-0") and ("log", "vit-0", 10) in events and ("log", "vit-0", 12) in events
    assert [e for e in events if e[0] == "stage_end"] == [("stage_end", "vit-0", 12), ("stage_end", "vit-1", 3)]
    assert ("evaluate", "vit-1", 0) in events and ("evaluate", "vit-1", 3) in events  # after growth, at the end
    assert chain.history_[1]["steps"] == 3 and len(chain.history_[1]["loss"]) == 3


def test_nested_params_get_set_and_clone() -> None:
    chain = Chain(family(), transferer=FeatureMSE(weight=10.0), optim=Optim(lr=2e-3), runtime=Runtime(device="cpu"))
    params = chain.get_params()
    assert params["optim__lr"] == 2e-3 and params["runtime__device"] == "cpu" and params["transferer__weight"] == 10.0
    chain.set_params(optim__grown_lr_scale=0.5, transferer__weight=3.0, runtime__precision="bf16")
    assert chain.optim == Optim(lr=2e-3, grown_lr_scale=0.5) and chain.transferer.weight == 3.0
    assert chain.runtime.precision == "bf16"
    twin = clone(chain)
    assert twin.optim == chain.optim and twin.transferer is not chain.transferer and twin.transferer.weight == 3.0
    assert Chain(family(), lr=3e-3, device="cpu").get_params()["optim__lr"] == 3e-3  # the shorthand
    assert Chain(family(), lr=3e-3).optim == Optim(lr=3e-3)


def test_a_diverging_stage_stops_naming_the_model_and_step(tmp_path, digits) -> None:
    train, val = digits
    run = tmp_path / "run"
    settings = {"budgets": [20, 20], "unit": "steps", "progress": False, "checkpoint_dir": str(run)}
    with pytest.raises(DivergenceError, match=r"vit-1 diverged at step \d+ of 20 \(loss") as caught:
        Chain(family(), optim=Optim(lr=3e-3, grown_lr_scale=1e8), checkpoint_every=1, **settings).fit(train, val)
    assert isinstance(caught.value, ComptError)
    assert (run / "vit-0" / "stage.json").exists()  # the last good stage is kept
    assert not (run / "vit-1" / "stage.json").exists()
    partial = torch.load(run / "vit-1" / "partial.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in partial["student"].values())  # never a NaN checkpoint
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert "NaN" not in "".join(lines) and all(json.loads(line) for line in lines)


def test_bad_steps_can_be_skipped_a_bounded_number_of_times(digits) -> None:
    train, _ = digits
    models = family()[:1]
    nan_at = {3, 5}
    calls = [0]

    def poison(module, args, output):  # two poisoned batches: their losses are NaN
        calls[0] += 1
        return output * float("nan") if calls[0] - 1 in nan_at else output

    models[0].heads.register_forward_hook(poison)
    settings = {"budgets": [10], "unit": "steps", "progress": False}
    chain = Chain(models, on_nonfinite="skip", max_skips=2, **settings).fit(train)
    assert chain.history_[0]["skipped"] == [3, 5] and len(chain.history_[0]["loss"]) == 8
    assert all(math.isfinite(v) for v in chain.history_[0]["loss"])
    calls[0] = 0
    with pytest.raises(DivergenceError, match=r"vit-0 diverged at step 6 of 10 .* after skipping 1"):
        Chain(models, on_nonfinite="skip", max_skips=1, **settings).fit(train)
