"""Growth and distillation in loops that are not comptlib's: Hugging Face's Trainer, and a plain PyTorch loop."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import TrainingArguments

import comptlib
from comptlib import FeatureMSE, LogitKL
from comptlib.data import text_loaders
from comptlib.families.decoder_lm import build_llama, lm_forward
from comptlib.integrations.transformers import DistillationTrainer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "language" / "hf_trainer.py"


@pytest.fixture(scope="module")
def rows():
    train, _ = text_loaders(4, seq_len=32, max_bytes=20_000)
    return train.dataset


def _trainer(tmp_path, rows, steps: int, batch: int = 4, accumulate: int = 1, **kwargs) -> DistillationTrainer:
    torch.manual_seed(0)
    small = build_llama(32, 1)
    large = comptlib.grow(small, build_llama(64, 2))
    settings = {"learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no", "report_to": [], "disable_tqdm": True}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulate, use_cpu=True, **settings | kwargs.pop("args", {}),
    )  # fmt: skip
    return DistillationTrainer(large, args, train_dataset=rows, teacher=small, **kwargs)


def test_loss_is_the_objective_plus_the_transferer_at_the_trainers_step(tmp_path, rows):
    kl = LogitKL(weight=2.0, schedule="linear")
    trainer = _trainer(tmp_path, rows, steps=10, transferer=kl)
    assert not any(p.requires_grad for p in trainer.teacher.parameters()) and not trainer.teacher.training
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.state.global_step, trainer.state.max_steps = 4, 10
    with torch.no_grad():  # move the teacher off the grown model's function, so the KL is not zero
        trainer.teacher.lm_head.weight.mul_(1.5)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        student, teacher = lm_forward(trainer.model, batch), lm_forward(trainer.teacher, batch)
    expected = student.loss + kl(student, teacher, step=4, total=10)
    assert kl.weight_at(4, 10) == pytest.approx(1.2) and kl(student, teacher, 4, 10).item() > 0
    assert torch.allclose(loss, expected)
    trainer.model.eval()
    assert torch.allclose(trainer.compute_loss(trainer.model, batch), student.loss)  # evaluation: the objective alone


def test_trainer_trains_with_the_family_transferer_and_logs_it(tmp_path, rows):
    trainer = _trainer(tmp_path, rows, steps=3)
    assert isinstance(trainer.transferer, LogitKL) and trainer.transferer.schedule == "linear"
    before = trainer.model.model.layers[0].mlp.down_proj.weight.detach().clone()
    trainer.train()
    logged = [e for e in trainer.state.log_history if "transfer_loss" in e]
    assert len(logged) == 3 and all(abs(e["transfer_loss"]) < 1e-3 for e in logged[:1])  # exact growth: KL starts at 0
    assert not torch.equal(before, trainer.model.model.layers[0].mlp.down_proj.weight)


def test_a_projector_is_built_on_the_first_batch_and_trained(tmp_path, rows):
    mse = FeatureMSE(weight=10.0, projector="linear")
    trainer = _trainer(tmp_path, rows, steps=2, transferer=mse)
    trainer.train()
    assert mse.proj is not None and mse.proj.weight.shape == (32, 64)
    assert any(p is mse.proj.weight for group in trainer.optimizer.param_groups for p in group["params"])
    assert mse.proj.weight.grad is not None


def test_gradient_accumulation_takes_the_same_step_as_one_batch_of_the_same_examples(tmp_path, rows):
    # SGD without clipping: unlike Adam, its step scales with the gradient, so a loss (objective or
    # transfer) scaled wrongly across micro-batches would show; the transfer is made non-zero.
    sgd = {"optim": "sgd", "max_grad_norm": 0.0, "learning_rate": 0.5}
    trained = []
    for batch, accumulate in ((4, 1), (2, 2)):
        trainer = _trainer(tmp_path / str(batch), rows, steps=2, batch=batch, accumulate=accumulate, args=sgd)
        with torch.no_grad():
            trainer.teacher.lm_head.weight.mul_(1.5)
        before = trainer.model.model.layers[1].mlp.down_proj.weight.detach().clone()
        trainer.train()
        trained.append(trainer)
        assert not torch.equal(before, trainer.model.model.layers[1].mlp.down_proj.weight)
    whole, accumulated = (dict(t.model.named_parameters()) for t in trained)
    for name, weight in whole.items():
        assert torch.allclose(weight, accumulated[name], atol=1e-6, rtol=1e-5), name
    logged = [[e["transfer_loss"] for e in t.state.log_history if "transfer_loss" in e] for t in trained]
    assert len(logged[1]) == 2 and logged[0] == pytest.approx(logged[1], rel=1e-4)  # one mean per optimiser step


def test_hf_trainer_example_smoke(capsys):
    spec = importlib.util.spec_from_file_location("example_hf_trainer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--smoke"])
    assert result["grown"] == pytest.approx(result["source"], abs=1e-4)  # exact growth keeps the function
    assert result["distilled"] < result["grown"] and len(result["transfer_loss"]) == 2
    assert "DistillationTrainer, LogitKL" in capsys.readouterr().out
