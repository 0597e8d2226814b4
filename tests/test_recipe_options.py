"""The recipe options of issue 17: the WSD schedule, growth before the decay, shrink-and-perturb, noise on
free entries, a decaying or width-scaled transfer weight. Each test fails without its option."""

import copy

import pytest
import torch

from comptlib import Chain, FeatureMSE, LogitKL, Outputs, family_of
from comptlib.callbacks import Callback
from comptlib.checkpoint import weights_hash
from comptlib.config import RunConfig
from comptlib.errors import ConfigError
from comptlib.families.vit import build_vit
from comptlib.settings import Optim
from comptlib.stage import lr_factor

WSD = Optim(lr=3e-3, schedule="wsd", decay=0.25, warmup=0.0, grown_warmup=0.0)


def models() -> list:
    torch.manual_seed(0)
    return [build_vit(16, 1), build_vit(32, 2)]


class Grown(Callback):
    """What each grown stage starts from (after growth and any on_stage_start hook before this one)."""

    def __init__(self) -> None:
        self.students, self.teachers, self.snapshot_steps = {}, {}, []

    def on_stage_start(self, stage) -> None:
        if stage.teacher is not None:
            self.students[stage.index] = copy.deepcopy(stage.student)
            self.teachers[stage.index] = weights_hash(stage.teacher)

    def on_step_end(self, stage) -> None:
        if stage.snapshot is not None and not self.snapshot_steps:
            self.snapshot_steps.append(stage.step)


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, stage) -> None:
        stage.stop = stage.stop or stage.step == self.step


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction() -> None:
    assert WSD.decay_start(8) == 6 and Optim().decay_start(8) == 8  # cosine: no decay start
    factor = lr_factor(8, 0, 0.0, WSD.decay_start(8))
    assert [round(factor(s), 4) for s in range(8)] == [1, 1, 1, 1, 1, 1, 0.6667, 0.3333]
    warm = lr_factor(10, 2, 0.1, 8)
    assert [round(warm(s), 4) for s in (0, 1, 2, 7, 8, 9)] == [0.5, 1, 1, 1, 0.7, 0.4]


def test_the_stage_trains_at_the_wsd_rates(digits) -> None:
    seen = []

    class Rates(Callback):
        def watch(self, stage, role):
            if role == "student":
                seen.append(stage.opt.param_groups[0]["lr"])

    Chain(models()[:1], budgets=[8], unit="steps", optim=WSD, progress=False, callbacks=[Rates()]).fit(digits[0])
    assert seen == pytest.approx([3e-3] * 6 + [2e-3, 1e-3])


def test_pre_decay_grows_from_the_snapshot_where_the_decay_begins_and_distils_from_the_final(digits) -> None:
    train, val = digits
    common = {"budgets": [8, 4], "unit": "steps", "optim": WSD, "progress": False}
    watch = Grown()
    chain = Chain(models(), grow_from="pre_decay", callbacks=[watch], **common).fit(train, val)
    assert watch.snapshot_steps == [6]  # decay 0.25 of 8 steps: the decay begins at step 6
    assert watch.teachers[1] == weights_hash(chain.models_[0])  # the teacher is the final model

    # model 0 stopped where its decay begins is the snapshot; growing it gives the grown start
    stopped = Chain(models()[:1], budgets=[8], unit="steps", optim=WSD, progress=False, callbacks=[StopAt(6)])
    snapshot = stopped.fit(train).models_[0]
    assert weights_hash(snapshot) != weights_hash(chain.models_[0])
    grown = family_of(snapshot).grower("exact", seed=0).grow(snapshot, models()[1])
    assert weights_hash(watch.students[1]) == weights_hash(grown)
    # the decay's steps are model 0's, counted in its stage
    assert chain.history_[0]["steps"] == 8 and chain.ledger_.stages[0].samples == 8 * chain.history_[0]["batch_size"]


class Crash(Callback):
    def __init__(self, index: int, step: int) -> None:
        self.index, self.step = index, step

    def on_step_end(self, stage) -> None:
        if (stage.index, stage.step) == (self.index, self.step):
            raise RuntimeError("killed")


@pytest.mark.parametrize("where", ["after model 0", "inside model 0, past its decay start"])
def test_a_resumed_chain_grows_from_the_pre_decay_snapshot_it_saved(digits, tmp_path, where) -> None:
    train, val = digits
    common = {"budgets": [8, 4], "unit": "steps", "optim": WSD, "progress": False, "grow_from": "pre_decay"}
    reference = Chain(models(), **common).fit(train, val)
    run = {"checkpoint_dir": str(tmp_path), "checkpoint_every": 1}
    if where == "after model 0":
        with pytest.raises(RuntimeError, match="killed"):
            Chain(models(), callbacks=[Crash(1, 1)], **common | run).fit(train, val)
    else:  # the partial checkpoint of step 7 is past the snapshot of step 6
        with pytest.raises(RuntimeError, match="killed"):
            Chain(models(), callbacks=[Crash(0, 7)], **common | run).fit(train, val)
    assert (tmp_path / "vit-0" / "pre_decay.safetensors").exists()
    resumed = Chain(models(), resume=True, **common | run).fit(train, val)
    assert [weights_hash(m) for m in resumed.models_] == [weights_hash(m) for m in reference.models_]


def test_pre_decay_needs_a_wsd_schedule(digits) -> None:
    with pytest.raises(ValueError, match="schedule='wsd'"):
        Chain(models(), budgets=[4, 2], unit="steps", grow_from="pre_decay", progress=False).fit(digits[0])


def test_shrink_and_perturb_moves_the_grown_matrices_by_the_right_amount(digits) -> None:
    common = {"budgets": [4, 2], "unit": "steps", "progress": False}
    plain, shrunk, perturbed = Grown(), Grown(), Grown()
    Chain(models(), callbacks=[plain], **common).fit(digits[0])
    Chain(models(), shrink=0.5, callbacks=[shrunk], **common).fit(digits[0])
    Chain(models(), perturb=0.01, callbacks=[perturbed], **common).fit(digits[0])
    before = dict(plain.students[1].named_parameters())
    for name, p in shrunk.students[1].named_parameters():
        assert torch.equal(p, 0.5 * before[name] if p.dim() >= 2 else before[name]), name
    noise = torch.cat([(p - before[n]).flatten() for n, p in perturbed.students[1].named_parameters() if p.dim() >= 2])
    assert noise.std().item() == pytest.approx(0.01, rel=0.05) and abs(noise.mean().item()) < 1e-3


def test_growth_snr_sets_the_noise_of_a_grower_given_by_name() -> None:
    chain = Chain(models(), growth_snr_db=10.0)
    grower = chain._growers(family_of(chain.models[0]))[0]
    assert grower.noise == pytest.approx(10**-0.5)  # 10 dB: noise std a third of the signal's
    assert Chain(models())._growers(family_of(chain.models[0]))[0].noise == 0.0


def test_ki_weight_decays_to_zero_over_the_first_40_percent() -> None:
    ki = LogitKL(schedule="linear", decay_fraction=0.4)
    assert [ki.weight_at(s, total=100) for s in (0, 20, 40, 80)] == [1.0, 0.5, 0.0, 0.0]
    assert LogitKL(schedule="linear").weight_at(40, total=100) == pytest.approx(0.6)  # without: the whole stage
    with pytest.raises(ConfigError, match="not both"):
        FeatureMSE(schedule="linear", decay_steps=10, decay_fraction=0.4)


def test_width_reference_scales_the_feature_loss_by_its_width() -> None:
    torch.manual_seed(0)
    s = Outputs(loss=None, logits=torch.zeros(4, 2), features=torch.randn(4, 64))
    t = Outputs(loss=None, logits=torch.zeros(4, 2), features=torch.randn(4, 64))
    plain, scaled = FeatureMSE(), FeatureMSE(width_reference=512)
    assert scaled(s, t).item() == pytest.approx(plain(s, t).item() * 64 / 512)


def test_the_options_are_run_settings_too() -> None:
    cfg = RunConfig.resolve(schedule="wsd", decay=0.3, grow_from="pre_decay", shrink=0.6, perturb=0.01)
    assert cfg.grow_from == "pre_decay" and Optim(**cfg.group(Optim)).decay_start(10) == 7
    with pytest.raises(ConfigError, match="decay"):
        RunConfig.resolve(decay=1.0)
