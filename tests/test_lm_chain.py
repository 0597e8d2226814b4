"""Language models end to end: offline text, a Llama chain on stdlib source, LoRA on a grown model, the examples."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from types import ModuleType

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import LlamaForCausalLM

from comptlib import Chain, grow
from comptlib.data import ByteTokenizer, _text_files, load_text, text_loaders
from comptlib.families.decoder_lm import build_gpt2, build_llama, build_qwen2, evaluate_lm, lm_forward

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "language"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stdlib_loaders():
    return text_loaders(16, seq_len=64, max_bytes=300_000)


# -- text data -------------------------------------------------------------------
def test_byte_tokenizer_round_trips_any_text():
    text = "def f(x):\n    return 'né' + \"€\" + '\U0001f600'\t\x00"
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == torch.long and ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text and tok.vocab_size == 256 and tok.pad_id is None
    padded = ByteTokenizer(pad=True)
    assert padded.vocab_size == 257
    assert padded.decode(torch.cat([ids, torch.full((3,), padded.pad_id)])) == text


def test_stdlib_corpus_is_sorted_python_without_tests_and_deterministic():
    files = _text_files("stdlib")
    assert len(files) > 300 and files == sorted(files)
    assert all(p.suffix == ".py" for p in files)
    assert not any({"test", "tests", "idle_test", "site-packages"} & set(p.parts) for p in files)
    text = load_text(max_bytes=50_000)
    assert text == load_text(max_bytes=50_000) and "def " in text
    assert 50_000 - 4 < len(text.encode("utf-8")) <= 50_000


def test_load_text_from_a_folder_skips_hidden_and_binary_files(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first né\n")
    (tmp_path / "sub" / "c.md").write_text("third\n")
    (tmp_path / ".hidden").write_text("hidden\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01binary")
    assert load_text(tmp_path) == "first né\nsecond\nthird\n"
    assert load_text(tmp_path / "b.txt") == "second\n"
    assert load_text(tmp_path, max_bytes=8) == "first n"  # "é" is 2 bytes, cut: dropped
    with pytest.raises(FileNotFoundError):
        load_text(tmp_path / "missing")


def test_text_loaders_batches_split_and_num_bytes():
    seq, max_bytes = 48, 40_000  # a 4,000-byte held-out tail: 83 full windows and a partial one
    train, val = text_loaders(8, seq_len=seq, max_bytes=max_bytes, val_fraction=0.1, seed=3)
    ids = ByteTokenizer().encode(load_text(max_bytes=max_bytes))
    split = len(ids) - round(0.1 * len(ids))

    batch = next(iter(train))
    assert set(batch) == {"input_ids", "attention_mask", "num_bytes"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (8, seq) and batch["num_bytes"].shape == (8,)
    assert all(t.dtype == torch.long for t in batch.values())
    assert bool((batch["attention_mask"] == 1).all()) and batch["num_bytes"].tolist() == [seq - 1] * 8

    # training windows tile the stream up to the split; held-out rows are exactly the tail after it
    train_rows = torch.stack([row["input_ids"] for row in train.dataset])
    assert torch.equal(train_rows.flatten(), ids[: train_rows.numel()]) and train_rows.numel() <= split
    val_ids = torch.cat([b["input_ids"] for b in val])
    val_mask = torch.cat([b["attention_mask"] for b in val])
    val_bytes = torch.cat([b["num_bytes"] for b in val])
    assert torch.equal(val_ids[val_mask.bool()], ids[split:])
    assert val_mask[-1].sum() < seq and not val_mask[-1, -1]  # this tail is partial: right-padded and masked
    assert torch.equal(val_bytes, val_mask.sum(1) - 1) and int(val_bytes.sum()) == len(ids) - split - len(val_ids)

    # deterministic for a seed
    train2, val2 = text_loaders(8, seq_len=seq, max_bytes=max_bytes, val_fraction=0.1, seed=3)
    assert torch.equal(next(iter(train2))["input_ids"], batch["input_ids"])
    assert torch.equal(torch.cat([b["input_ids"] for b in val2]), val_ids)

    # byte-level: every predicted token is one byte, and num_bytes says so
    scores = evaluate_lm(build_llama(16, 1), val, CPU)
    assert scores["bits_per_byte"] == pytest.approx(scores["bits_per_token"])


def test_text_loaders_reject_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction"):
        text_loaders(val_fraction=1.0)
    with pytest.raises(ValueError, match="seq_len"):
        text_loaders(seq_len=1)
    with pytest.raises(ValueError, match="raise max_bytes"):
        text_loaders(64, seq_len=128, max_bytes=5_000)


# -- builders --------------------------------------------------------------------
@pytest.mark.parametrize("build", [build_llama, build_qwen2, build_gpt2])
def test_builders_make_tied_byte_level_models_that_grow_exactly(build):
    small, large = build(32, 1), build(64, 2)
    assert small.config.vocab_size == 256 and small.lm_head.weight is small.get_input_embeddings().weight
    assert small.config.hidden_size // small.config.num_attention_heads == 16
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    grow(small, large)
    assert torch.allclose(small.eval()(ids).logits, large.eval()(ids).logits, atol=1e-5)


# -- a chain on real text ----------------------------------------------------------
def test_llama_chain_on_stdlib_source(stdlib_loaders):
    train, val = stdlib_loaders
    torch.manual_seed(0)
    chain = Chain([build_llama(32, 1), build_llama(64, 2)], budgets=[40, 12], unit="steps", lr=3e-3, progress=False)
    chain.fit(train, val)
    first, second = chain.history_
    assert second["val"][0]["bits_per_byte"] == pytest.approx(first["val"][-1]["bits_per_byte"], rel=1e-4)
    random_init = evaluate_lm(build_llama(64, 2), val, CPU)["bits_per_byte"]
    grown = chain.report_["models"][1]["bits_per_byte"]
    assert grown < random_init - 1.0, (grown, random_init)
    ratio = chain.report_["acceleration_ratio"]
    assert math.isfinite(ratio) and ratio > 1


# -- LoRA on a grown model ----------------------------------------------------------
def test_lora_on_a_grown_llama_trains_only_the_adapters(stdlib_loaders):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    large = grow(build_llama(32, 1), build_llama(64, 2))
    model = get_peft_model(large, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    batch = next(iter(stdlib_loaders[0]))
    loss = lm_forward(model, batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    named = dict(model.named_parameters())
    adapters = {n for n in named if "lora_" in n}
    assert adapters and {n for n, p in named.items() if p.grad is not None} == adapters
    assert any(float(named[n].grad.abs().sum()) > 0 for n in adapters if "lora_B" in n)

    torch.optim.SGD([named[n] for n in adapters], lr=0.1).step()
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=batch["input_ids"]).logits
    merged = model.merge_and_unload()
    assert type(merged) is LlamaForCausalLM
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=batch["input_ids"]).logits, adapted, atol=1e-4)


# -- examples ------------------------------------------------------------------------
def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lm_chain_example_smoke(family, capsys):
    _example("lm_chain").main(["--smoke", "--family", family])
    out = capsys.readouterr().out
    assert "acceleration ratio" in out and all(f"{family}-{size}" in out for size in ("32x2", "64x3", "128x4"))


def test_lora_finetune_example_smoke(capsys):
    _example("lora_finetune").main(["--smoke"])
    out = capsys.readouterr().out
    assert "merge_and_unload() -> LlamaForCausalLM" in out and "-> LlamaForCausalLM:" in out


# -- a BPE tokenizer beside the bytes ---------------------------------------------------
def test_bpe_recipe_trains_its_tokenizer_once_and_sizes_the_models(tmp_path, monkeypatch):
    from comptlib import text
    from comptlib.recipes import RECIPES, with_bpe, with_tokenizer

    monkeypatch.setenv("COMPTLIB_CACHE", str(tmp_path))
    byte_level = RECIPES["llama"]
    recipe = with_bpe(byte_level, 512, max_bytes=100_000)
    assert recipe.tokenizer is not None and len(recipe.tokenizer) == 512 and "BPE of 512" in recipe.data
    assert [m.config.vocab_size for m in recipe.models()] == [512] * 3
    assert byte_level.models()[0].config.vocab_size == 256 and byte_level.tokenizer is None  # the default is bytes
    train, val = recipe.loaders(8, 0)
    batch = next(iter(train))
    assert (
        int(batch["input_ids"].max()) < 512 and float(batch["num_bytes"].float().mean()) > 1.5 * 127
    )  # tokens cover bytes
    monkeypatch.setattr(text, "train_tokenizer", lambda *a, **k: pytest.fail("trained twice"))
    again = with_bpe(byte_level, 512, max_bytes=100_000)
    assert text.tokenizer_fingerprint(again.tokenizer) == text.tokenizer_fingerprint(recipe.tokenizer)
    (tmp_path / "mine.txt").write_text(load_text(max_bytes=60_000))
    user_train, _, options = recipe.data_loaders(8, 0, str(tmp_path / "mine.txt"))  # --data with the BPE
    assert options == {} and isinstance(user_train.dataset, text.TokenWindows)
    named = with_tokenizer(byte_level, recipe.tokenizer, "my tokenizer", max_bytes=100_000)
    assert named.data.endswith("my tokenizer") and named.models()[0].config.vocab_size == 512


def test_lm_chain_example_smoke_with_bpe(tmp_path, monkeypatch, capsys):
    import comptlib.data

    monkeypatch.setenv("COMPTLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(
        comptlib.data, "DEFAULT_TEXT_BYTES", 200_000
    )  # a smaller corpus: the smoke run checks code paths
    _example("lm_chain").main(["--smoke", "--tokenizer", "bpe", "--vocab-size", "1024"])
    out = capsys.readouterr().out
    assert "byte-level BPE of 1,024 tokens" in out and "acceleration ratio" in out
