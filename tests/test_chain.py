"""Chain.fit end to end on the real digits data, scikit-learn conventions, and bad input."""

import math

import pytest
import torch
from sklearn.base import clone
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import VisionTransformer

from comptlib import Chain, FeatureMSE
from comptlib.bench import curves
from comptlib.checkpoint import weights_hash
from comptlib.data import Images
from comptlib.families.vit import build_vit, evaluate_classifier


def family() -> list[VisionTransformer]:
    torch.manual_seed(0)
    return [build_vit(32, 1), build_vit(48, 2), build_vit(64, 2)]


@pytest.fixture(scope="module")
def fitted(digits) -> Chain:
    train, val = digits
    return Chain(family(), budgets=[200, 30, 30], unit="steps", lr=3e-3, progress=False, eval_every=15).fit(train, val)


def test_fit_returns_self_with_fitted_attributes(fitted: Chain) -> None:
    assert len(fitted.models_) == 3 and len(fitted.history_) == 3
    for record, steps in zip(fitted.history_, [200, 30, 30]):
        assert len(record["loss"]) == steps and all(math.isfinite(v) for v in record["loss"])
        assert record["flops"] > 0 and record["wall_time"] > 0
    assert [v["step"] for v in fitted.history_[1]["val"]] == [0, 15, 30]
    assert all(not m.training for m in fitted.models_)


def test_every_grown_model_beats_a_random_one(fitted: Chain, digits) -> None:
    _, val = digits
    for i, model in enumerate(fitted.models_):
        random_acc = evaluate_classifier(family()[i], val, torch.device("cpu"))["accuracy"]
        trained_acc = fitted.history_[i]["val"][-1]["accuracy"]
        assert trained_acc > random_acc + 0.3, (i, trained_acc, random_acc)
        assert trained_acc == pytest.approx(evaluate_classifier(model, val, torch.device("cpu"))["accuracy"])


def test_exact_growth_starts_each_model_where_its_predecessor_ended(fitted: Chain) -> None:
    for prev, record in zip(fitted.history_, fitted.history_[1:]):
        assert record["val"][0]["accuracy"] == pytest.approx(prev["val"][-1]["accuracy"])
        assert record["val"][0]["loss"] == pytest.approx(prev["val"][-1]["loss"], rel=1e-4)


def test_the_constructor_models_are_not_modified(digits) -> None:
    models = family()
    before = [m.state_dict()["heads.head.weight"].clone() for m in models]
    Chain(models, budgets=[3, 2, 2], unit="steps", progress=False).fit(digits[0])
    assert all(torch.equal(b, m.state_dict()["heads.head.weight"]) for b, m in zip(before, models))


def test_report_and_ledger_agree(fitted: Chain) -> None:
    report, ledger = fitted.report_, fitted.ledger_
    samples = 200 * 64
    assert report["baseline_samples"] == samples
    assert report["independent_flops"] == pytest.approx(sum(s.student_flops * samples for s in ledger.stages))
    assert report["chain_flops"] == pytest.approx(sum(r["flops"] for r in fitted.history_))
    assert report["acceleration_ratio"] == pytest.approx(report["independent_flops"] / report["chain_flops"])
    # The image classifiers distil nothing by default: a grown stage pays no teacher forward.
    assert [s.teacher_flops for s in ledger.stages] == [0.0, 0.0, 0.0]
    assert [r["accuracy"] for r in report["models"]] == [h["val"][-1]["accuracy"] for h in fitted.history_]


def test_teacher_is_frozen_and_in_eval_mode_during_training(digits) -> None:
    seen = []
    models = family()[:2]
    models[0].encoder.register_forward_pre_hook(  # hooks travel with the chain's copy of model 0
        lambda m, args: seen.append((m.training, torch.is_grad_enabled(), any(p.requires_grad for p in m.parameters())))
    )
    chain = Chain(models, budgets=[2, 3], unit="steps", transferer=FeatureMSE(), progress=False).fit(digits[0])
    as_student, as_teacher = seen[:2], seen[2:]
    assert as_student == [(True, True, True)] * 2
    assert len(as_teacher) == 4 and set(as_teacher) == {(False, False, False)}  # a probe, then 3 steps
    assert all(p.requires_grad for p in chain.models_[0].parameters())  # handed back trainable
    # the grown stage pays for its teacher's forward: about a third of the teacher's own training step
    teacher, grown = chain.ledger_.stages
    assert grown.teacher_flops == pytest.approx(teacher.student_flops / 3, rel=0.15)
    seen.clear()
    Chain(models, budgets=[2, 3], unit="steps", progress=False).fit(digits[0])  # the default: no transfer
    assert len(seen) == 3  # two training steps, then one probe for the growth check: no forward a step


def test_sklearn_conventions(digits) -> None:
    chain = Chain(
        family(), budgets=[2, 1, 1], unit="steps", lr=1e-3, transferer=FeatureMSE(weight=10.0), progress=False
    )
    params = chain.get_params()
    assert params["optim__lr"] == 1e-3 and params["budgets"] == [2, 1, 1]
    chain.set_params(optim__lr=2e-3, grower="compt")
    assert chain.optim.lr == 2e-3 and chain.grower == "compt"
    twin = clone(chain)
    assert twin is not chain and twin.get_params()["optim__lr"] == 2e-3
    assert twin.models[0] is not chain.models[0] and twin.transferer is not chain.transferer
    assert not hasattr(twin, "models_")
    assert twin.fit(digits[0]) is twin and len(twin.models_) == 3
    assert "VisionTransformer" in repr(chain)


def test_compt_growth_without_transfer_and_first_trained(digits) -> None:
    train, val = digits
    chain = Chain(
        family()[:2],
        grower="compt",
        transferer=None,
        budgets=[0, 5],
        unit="steps",
        first_trained=True,
        baseline_budget=40,
        progress=False,
    )
    chain.fit(train, val)
    assert chain.history_[0]["trained"] is False and chain.history_[0]["loss"] == []
    assert chain.history_[1]["transfer_loss"] == []
    # The pre-trained first model is counted at the baseline budget, so the ratio stays comparable.
    assert chain.ledger_.stages[0].samples == chain.report_["baseline_samples"] == 40 * 64
    with pytest.raises(ValueError, match="baseline_budget defaults to budgets"):
        chain.set_params(baseline_budget=None).fit(train)


def counting_models() -> tuple[list[VisionTransformer], list[int]]:
    calls = [0]
    models = family()
    for m in models:
        m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        m.encoder.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return models, calls


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda m: [m[1], m[0], m[2]], ValueError, r"models\[1\].*hidden_dim shrinks"),
        (lambda m: [m[0], torch.nn.Linear(3, 3)], TypeError, r"models\[1\].*no comptlib family.*Linear"),
        (lambda m: [m[0], build_vit(64, 2, num_heads=8)], ValueError, r"models\[1\].*head_dim"),
        (lambda m: [m[0], build_vit(32, 2, num_classes=5)], ValueError, r"models\[1\].*num_classes"),
    ],
)
def test_bad_chains_fail_before_training(digits, change, error, message) -> None:
    models, calls = counting_models()
    with pytest.raises(error, match=message):
        Chain(change(models), budgets=[1] * len(change(models)), unit="steps", progress=False).fit(digits[0])
    assert calls[0] == 0


def test_mixed_families_are_refused(digits) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    lm = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=1, vocab_size=16))
    with pytest.raises(
        TypeError, match=r"mixed families: models\[0\] \(VisionTransformer\) is 'vit', models\[1\] \(GPT2LMHeadModel\)"
    ):
        Chain([build_vit(16, 1), lm], progress=False).fit(digits[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budgets": [1, 2]}, "budgets has 2 entries for 3 models"),
        ({"budgets": [1, -1, 1]}, r"budgets\[1\] must be positive"),
        ({"unit": "hours"}, "unit must be one of"),
        ({"grower": ["exact"]}, "grower has 1 entries for 2 links"),
        ({"grower": "magic"}, "grower must be"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"names": ["a"]}, "names has 1 entries"),
        ({"targets": [None, 0.5]}, "targets has 2 entries for 3 models"),
        ({"targets": [None, 0.5, 0.5]}, "targets need eval_every > 0"),
    ],
)
def test_bad_settings_fail_before_training(digits, kwargs, message) -> None:
    models, calls = counting_models()
    settings = {"budgets": [1, 1, 1], "unit": "steps", "progress": False} | kwargs
    with pytest.raises(ValueError, match=message):
        Chain(models, **settings).fit(digits[0])
    assert calls[0] == 0


def test_empty_loader_and_empty_chain() -> None:
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="training loader is empty"):
        Chain(family(), budgets=[1, 1, 1], unit="steps", progress=False).fit(empty)
    with pytest.raises(TypeError, match="non-empty list"):
        Chain([], progress=False).fit(empty)


def test_default_budgets_follow_the_paper_proportions(digits) -> None:
    chain = Chain(family(), progress=False)
    steps, baseline = chain._steps(digits[0])
    per_epoch = len(digits[0])
    assert steps == [8 * per_epoch, round(1.5 * per_epoch), per_epoch] and baseline == 8 * per_epoch


def test_budget_search_stops_each_stage_at_its_target(digits) -> None:
    train, val = digits
    chain = Chain(
        family(), budgets=[60, 40, 40], unit="steps", eval_every=5, targets=[None, 0.0, 1.01], progress=False
    ).fit(train, val)
    first, easy, impossible = chain.history_
    assert first["steps"] == 60 and first["reached"] is False and first["target"] is None
    # A target any model meets stops the stage at its first evaluation; the ledger counts those steps only.
    assert easy["steps"] == 5 and easy["budget"] == 40 and easy["reached"] is True and len(easy["loss"]) == 5
    assert chain.ledger_.stages[1].samples == 5 * 64
    assert [v["step"] for v in easy["val"]] == [0, 5]
    # One nothing meets runs to its cap.
    assert impossible["steps"] == 40 and impossible["reached"] is False and impossible["val"][-1]["step"] == 40
    assert chain.report_["models"][1]["steps"] == 5
    with pytest.raises(ValueError, match="targets are validation metrics"):
        chain.fit(train)


def test_no_growth_keeps_the_students_own_init(digits) -> None:
    train, val = digits
    models = family()[:2]
    chain = Chain(models, grower=None, transferer=FeatureMSE(), budgets=[30, 2], unit="steps", progress=False)
    chain.fit(train, val)
    fresh = evaluate_classifier(models[1], val, torch.device("cpu"))
    assert chain.history_[1]["val"][0] == {"step": 0, **fresh}
    assert chain.history_[1]["transfer_loss"]  # still distilled from its predecessor, through a projector


def test_how_often_a_stage_evaluates_does_not_change_what_it_trains() -> None:
    """Iterating the held-out loader draws from the global RNG, which augmentation also uses."""
    gen = torch.Generator().manual_seed(0)
    images = TensorDataset(
        torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=gen), torch.arange(64) % 10
    )
    train = DataLoader(Images(images, augment=True), batch_size=16, shuffle=True, generator=torch.Generator())
    val = DataLoader(Images(images), batch_size=32)

    def trained(eval_every: int) -> str:
        torch.manual_seed(0)
        chain = Chain([build_vit(16, 1)], budgets=[12], unit="steps", eval_every=eval_every, progress=False)
        return weights_hash(chain.fit(train, val).models_[0])

    assert trained(2) == trained(12) == trained(0)


def test_a_pretrained_first_model_is_plotted_at_the_cost_the_ledger_counts(digits) -> None:
    train, val = digits
    first = Chain(family()[:1], budgets=[10], unit="steps", progress=False).fit(train, val)
    settings = {"unit": "steps", "eval_every": 5, "progress": False, "first_trained": True, "baseline_budget": 10}
    chain = Chain([first.models_[0], family()[1]], budgets=[0, 5], **settings).fit(train, val)
    trained, grown = curves(chain, []).values()
    assert trained == [(first.report_["chain_flops"], first.history_[0]["val"][-1]["accuracy"])]
    assert [x for x, _ in grown] == [first.report_["chain_flops"], chain.report_["chain_flops"]]
