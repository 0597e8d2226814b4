"""The command line, run in-process with typer's CliRunner."""

import json

import pytest
import torch
from safetensors.torch import load_model
from typer.testing import CliRunner

import comptlib
from comptlib.cli import app
from comptlib.families.vit import build_vit

runner = CliRunner()
TINY = ["--sizes", "16x1,32x2", "--budgets", "30,5", "--unit", "steps", "--no-progress"]


def flat(text: str) -> str:
    return " ".join(text.split())


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("comptlib ")
    for command in ("grow", "plan", "check"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and f"comptlib {command}" in result.output


def test_grow_writes_a_complete_run_directory(tmp_path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["grow", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "acceleration ratio" in result.output and "vit-32x2" in result.output
    report = json.loads((out / "report.json").read_text())["report"]
    assert report["acceleration_ratio"] > 1 and len(report["models"]) == 2
    assert json.loads((out / "config.json").read_text())["sizes"] == ["16x1", "32x2"]
    assert [e["name"] for e in json.loads((out / "lineage.json").read_text())] == ["vit-16x1", "vit-32x2"]
    assert (out / "metrics.jsonl").read_text().count("\n") >= 3 and "Acceleration ratio" in (
        out / "report.md"
    ).read_text()
    load_model(build_vit(32, 2), str(out / "vit-32x2" / "model.safetensors"))  # a plain torchvision ViT loads it
    checked = runner.invoke(app, ["check", "32x2", "48x3", "--weights", str(out / "vit-32x2" / "model.safetensors")])
    assert checked.exit_code == 0 and "function kept" in flat(checked.output)
    wrong = runner.invoke(app, ["check", "16x1", "48x3", "--weights", str(out / "vit-32x2" / "model.safetensors")])
    assert wrong.exit_code == 2 and "model.safetensors" in flat(wrong.output)

    again = runner.invoke(app, ["grow", *TINY, "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in flat(again.output) and "--force" in flat(again.output)
    resumed = runner.invoke(app, ["grow", *TINY, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0 and json.loads((out / "report.json").read_text())["report"] == report
    forced = runner.invoke(app, ["grow", *TINY, "--out", str(out), "--force"])
    assert forced.exit_code == 0


def test_grow_with_a_budget_search(tmp_path) -> None:
    args = ["--sizes", "16x1,32x2", "--budgets", "60,40", "--unit", "steps", "--targets", "0.3", "--eval-every", "5"]
    result = runner.invoke(app, ["grow", *args, "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 0, result.output
    grown = json.loads((tmp_path / "r" / "report.json").read_text())["history"][1]
    assert grown["target"] == 0.3 and grown["budget"] == 40
    assert grown["reached"] and grown["steps"] < 40 and grown["steps"] % 5 == 0  # stopped at its target


def test_grow_from_a_toml_config(tmp_path) -> None:
    config = tmp_path / "chain.toml"
    config.write_text('[chain]\nfamily = "vit"\nsizes = ["16x1", "32x1"]\nbudgets = [20, 5]\nunit = "steps"\n')
    result = runner.invoke(app, ["grow", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["budgets"] == [20.0, 5.0]


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        (["--family", "mlp"], None, "family: 'mlp' is not one of"),
        (["--sizes", "64"], None, "sizes: size '64' is not WIDTHxDEPTH"),
        (["--sizes", "64x2,32x2", "--budgets", "1,1"], None, "hidden_dim shrinks"),
        (["--budgets", "1,x"], None, "comma-separated numbers"),
        (["--budgets", "1,1"], None, "budgets: 2 entries for 3 sizes"),
        (["--unit", "hours"], None, "unit: 'hours' is not one of"),
        ([], 'sizes = ["16x1"]\nbudgets = [1]\nlearning_rate = 3', "learning_rate: unknown field"),
        ([], "lr = -1", "lr: must be positive"),
        ([], "sizes = [", "not valid TOML"),
        (["--targets", "0.9"], None, "targets: 1 entries for 2 grown models"),
        (["--targets", "0.9,high"], None, "comma-separated numbers"),
        # every numeric setting is checked finite and in range, naming the field
        (["--budgets", "nan,4"], None, "budgets[0]: must be finite, got nan"),
        (["--checkpoint-every", "-5"], None, "checkpoint_every: must be at least 0, got -5"),
        (["--lr", "inf"], None, "lr: must be finite, got inf"),
        (["--on-nonfinite", "maybe"], None, "on_nonfinite: 'maybe' is not one of stop, skip"),
        ([], 'lr = "fast"', "lr: must be a number, got 'fast'"),
        ([], "budgets = 20", "budgets: must be a list, got 20"),
        ([], 'sizes = "16x1"', "sizes: must be a list, got '16x1'"),
        ([], 'sizes = ["16x1", "32x1"]\nbudgets = [3, 2]\nseed = 1.5', "seed: must be a whole number, got 1.5"),
    ],
)
def test_bad_input_is_one_clear_message_with_exit_code_2(args, toml, message, tmp_path) -> None:
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml)
        args = [*args, "--config", str(tmp_path / "c.toml")]
    out = tmp_path / "out"
    result = runner.invoke(app, ["grow", *args, "--out", str(out), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in flat(result.output) and "Traceback" not in result.output
    assert not out.exists()  # nothing written


def test_plan_projects_the_ratio_without_training() -> None:
    result = runner.invoke(app, ["plan", "--sizes", "16x1,32x2", "--budgets", "30,5", "--unit", "steps"])
    assert result.exit_code == 0, result.output
    assert "projected acceleration ratio" in flat(result.output) and "vit-32x2" in result.output


def test_check_reports_exact_and_warm_start_growth() -> None:
    exact = runner.invoke(app, ["check", "32x2", "48x3"])
    assert exact.exit_code == 0 and "function kept" in flat(exact.output)
    warm = runner.invoke(app, ["check", "32x2", "64x4", "--method", "compt"])
    assert warm.exit_code == 0 and "function changed" in flat(warm.output)
    bad = runner.invoke(app, ["check", "64x2", "32x2"])
    assert bad.exit_code == 2 and "hidden_dim shrinks" in flat(bad.output)


def test_bench_compares_the_chain_with_each_model_alone(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    args = ["bench", "--sizes", "16x1,32x1", "--budgets", "20,5", "--unit", "steps", "--eval-every", "10"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert [m["alone_steps"] for m in bench["models"]] == [20, 20] and bench["acceleration_ratio"] > 1
    assert bench["models"][1]["grown"] == pytest.approx(bench["models"][0]["chain"])
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_grow_on_your_own_image_folder_and_text(tmp_path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:300], digits.target[:300])):
        if label < 3:  # three classes: the models are built with three outputs
            (tmp_path / "img" / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 15).astype("uint8")).convert("RGB").save(
                tmp_path / "img" / str(label) / f"{i}.png"
            )
    args = ["grow", "--data", str(tmp_path / "img"), *TINY, "--batch-size", "16", "--out", str(tmp_path / "r1")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r1" / "report.json").read_text())["data"] == str(tmp_path / "img")
    (tmp_path / "t.txt").write_text("def f(x):\n    return x + 1\n" * 2000)
    args = ["grow", "--family", "gpt2", "--data", str(tmp_path / "t.txt"), "--sizes", "16x1,32x1", "--budgets", "4,2"]
    result = runner.invoke(app, [*args, "--batch-size", "4", "--out", str(tmp_path / "r2"), "--no-progress"])
    assert result.exit_code == 0, result.output
    missing = runner.invoke(app, ["grow", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")])
    assert missing.exit_code == 2 and "no image folder" in flat(missing.output) and not (tmp_path / "r3").exists()


def test_the_papers_vit_presets_are_torchvisions_shapes() -> None:
    from torchvision.models import vit_b_16

    from comptlib.config import ConfigError, RunConfig
    from comptlib.families.vit import vit_dims

    cfg = RunConfig.resolve(family="vit-paper", sizes=("vit-s", "vit-b"), budgets=(24, 16))
    small, base = cfg.recipe.models(cfg.sizes)
    assert vit_dims(base) == vit_dims(vit_b_16(num_classes=10))
    assert vit_dims(small)["hidden_dim"] == 384 and vit_dims(small)["num_heads"] == 6
    with pytest.raises(ConfigError, match="neither WIDTHxDEPTH nor a preset"):
        RunConfig.resolve(family="vit-paper", sizes=("vit-h",), budgets=(1,))


def test_check_grows_a_saved_transformers_model_into_a_config(tmp_path) -> None:
    import torch

    from comptlib.families.decoder_lm import build_llama

    torch.manual_seed(0)
    source = build_llama(32, 1)
    source.save_pretrained(tmp_path / "src")
    build_llama(64, 2).config.save_pretrained(tmp_path / "tgt")
    result = runner.invoke(
        app, ["check", str(tmp_path / "src"), str(tmp_path / "tgt" / "config.json"), "--family", "llama"]
    )
    assert result.exit_code == 0, result.output
    assert "function kept" in flat(result.output) and "hidden_size" in result.output
    (tmp_path / "bad.json").write_text("{")
    bad = runner.invoke(app, ["check", str(tmp_path / "src"), str(tmp_path / "bad.json"), "--family", "llama"])
    assert bad.exit_code == 2 and "not a transformers config" in flat(bad.output)


@pytest.mark.parametrize("family", ["vit", "resnet", "clip", "llama", "fashion-vit"])
def test_the_config_template_reads_back_as_the_recipes_run(tmp_path, family) -> None:
    import tomllib

    from comptlib.config import RunConfig

    result = runner.invoke(app, ["config", "--family", family])
    assert result.exit_code == 0, result.output
    path = tmp_path / "chain.toml"
    path.write_text(result.output)
    assert tomllib.loads(result.output)["chain"]["family"] == family
    assert RunConfig.resolve(path) == RunConfig.resolve(family=family)


def test_tokenizer_train_then_grow_and_plan_on_it(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def add(x, y):\n    return x + y\n" * 3000)
    tok = tmp_path / "tok"
    result = runner.invoke(app, ["tokenizer", "train", "--data", str(corpus), "--vocab-size", "270", "--out", str(tok)])
    assert result.exit_code == 0 and "270 tokens" in result.output and str(tok) in flat(result.output), result.output
    again = runner.invoke(app, ["tokenizer", "train", "--data", str(corpus), "--vocab-size", "268", "--out", str(tok)])
    assert again.exit_code == 0, again.output  # its own tokenizer: trained again
    lm = ["--family", "llama", "--sizes", "32x1,48x1", "--tokenizer", str(tok), "--data", str(corpus)]
    plan = runner.invoke(app, ["plan", *lm, "--budgets", "4,2", "--unit", "steps"])
    assert plan.exit_code == 0 and "268 tokens" in flat(plan.output), plan.output
    out = tmp_path / "run"
    steps = ["--budgets", "4,2", "--unit", "steps", "--no-progress", "--out", str(out)]
    result = runner.invoke(app, ["grow", *lm, *steps])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["tokenizer"], config["text_column"]) == (str(tok), "text")
    assert "268 tokens" in json.loads((out / "report.json").read_text())["data"]
    other = tmp_path / "tok2"
    runner.invoke(app, ["tokenizer", "train", "--data", str(corpus), "--vocab-size", "265", "--out", str(other)])
    result = runner.invoke(app, ["grow", *lm[:5], str(other), *lm[6:], *steps, "--resume"])
    assert result.exit_code == 2 and "tokenizer" in flat(result.output), result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--vocab-size", "300", "--data", "/no/corpus"], ("/no/corpus",)),
        (["--vocab-size", "9", "--data", "stdlib"], ("vocab_size",)),
        (["--data", "stdlib"], ("--vocab-size",)),
        (["--vocab-size", "300", "--data", "stdlib", "--max-bytes", "0"], ("max_bytes",)),
    ],
)
def test_tokenizer_train_refuses_bad_input(tmp_path, args, words) -> None:
    result = runner.invoke(app, ["tokenizer", "train", *args, "--out", str(tmp_path / "tok")])
    assert result.exit_code == 2 and all(w in flat(result.output) for w in words), result.output
    assert not (tmp_path / "tok").exists()


def test_tokenizer_train_keeps_a_folder_that_is_not_a_tokenizer(tmp_path) -> None:
    (tmp_path / "thesis.tex").write_text("mine")
    args = ["tokenizer", "train", "--data", "stdlib", "--vocab-size", "300", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "thesis.tex" in flat(result.output), result.output
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def _pngs(root, classes=("3", "7"), per_class=20, size=28) -> None:
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (size, size), 10 * i + 100 * (c == classes[1])).save(root / c / f"{i}.png")


def test_bench_search_stops_each_grown_model_at_its_baseline_for_the_matched_quality_ratio(tmp_path) -> None:
    args = ["bench", "--sizes", "16x1,32x1", "--budgets", "40,5", "--unit", "steps", "--eval-every", "10"]
    result = runner.invoke(app, [*args, "--search", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "bench.json").read_text())
    grown = bench["models"][1]
    assert grown["reached"] and grown["search"] >= grown["alone"] and grown["search_steps"] < grown["alone_steps"]
    assert bench["matched_quality_ratio"] == pytest.approx(bench["alone_flops"] / bench["search_flops"])
    assert 1 < bench["matched_quality_ratio"] < bench["acceleration_ratio"] * 40 / 5
    assert f"matched-quality ratio (budget search): {bench['matched_quality_ratio']:.2f}x" in flat(result.output)


def test_a_budget_search_that_never_matches_claims_no_ratio(digits) -> None:
    from comptlib import Chain, FeatureMSE
    from comptlib.bench import budget_search, compare, fit_alone, format_table

    train, val = digits
    torch.manual_seed(0)
    models = [build_vit(16, 1), build_vit(32, 1)]
    # not grown, only distilled from the weaker model: the larger ViT stays behind its baseline for all 40 steps
    settings = {"unit": "steps", "eval_every": 10, "progress": False, "lr": 3e-3}
    chain = Chain(models, budgets=[40, 5], grower=None, transferer=FeatureMSE(), **settings).fit(train, val)
    names = [record["name"] for record in chain.history_]
    alone = fit_alone(chain.models, train, val, budget=40, names=names, **settings)
    result = compare(chain, alone, budget_search(chain, alone, train, val))
    grown = result["models"][1]
    assert (grown["reached"], grown["search_steps"], result["matched_quality_ratio"]) == (False, 40, None)
    assert grown["search"] < grown["alone"]
    assert "matched-quality ratio (budget search): not reached" in format_table(result)


def test_an_image_folder_split_into_train_and_val_holds_out_val(tmp_path) -> None:
    for split in ("train", "val"):
        _pngs(tmp_path / "mnist" / split, per_class=20 if split == "train" else 5)
    args = ["grow", "--data", str(tmp_path / "mnist"), *TINY, "--batch-size", "8", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "images: 28x28 from the data, as 1 channel (grey)" in text
    assert comptlib.load(tmp_path / "run" / "vit-32x2").conv_proj.in_channels == 1  # grey read as grey
    assert f"40 for training from {tmp_path / 'mnist' / 'train'}" in text
    assert f"held out: 10 images from {tmp_path / 'mnist' / 'val'}" in text
    assert json.loads((tmp_path / "run" / "report.json").read_text())["data"] == str(tmp_path / "mnist")
    _pngs(tmp_path / "other", classes=("3", "8"), per_class=3)
    wrong = runner.invoke(app, [*args[:-1], str(tmp_path / "r2"), "--val-data", str(tmp_path / "other")])
    assert wrong.exit_code == 2 and "classes" in flat(wrong.output), wrong.output


@pytest.mark.parametrize("family", ["resnet", "convnext"])
def test_grey_images_build_one_channel_convnets_and_one_colour_image_makes_rgb(tmp_path, family) -> None:
    from PIL import Image

    _pngs(tmp_path / "grey", per_class=8, size=16)
    args = ["grow", "--family", family, *TINY, "--batch-size", "8"]
    result = runner.invoke(app, [*args, "--data", str(tmp_path / "grey"), "--out", str(tmp_path / "r1")])
    assert result.exit_code == 0, result.output
    assert "as 1 channel (grey)" in flat(result.output)
    model = comptlib.load(tmp_path / "r1" / f"{family}-32x2")
    stem = model.conv1 if family == "resnet" else model.features[0][0]
    assert stem.in_channels == 1
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 2)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "grey" / "3" / "colour.png")
    result = runner.invoke(app, [*args, "--data", str(tmp_path / "grey"), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 0, result.output
    assert "as 3 channels (RGB)" in flat(result.output)


def test_a_text_folder_says_what_was_read_and_uses_its_val(tmp_path) -> None:
    for i in range(5):
        (tmp_path / "shakespeare" / "train").mkdir(parents=True, exist_ok=True)
        (tmp_path / "shakespeare" / "train" / f"{i}.txt").write_text("To be, or not to be.\n" * 200)
    (tmp_path / "shakespeare" / "val").mkdir()
    (tmp_path / "shakespeare" / "val" / "v.txt").write_text("That is the question.\n" * 100)
    args = ["grow", "--family", "gpt2", "--data", str(tmp_path / "shakespeare"), "--sizes", "16x1,32x1"]
    args += ["--budgets", "2,1", "--batch-size", "4", "--no-progress", "--max-bytes", "10000"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "read 3 of 5 files, 10,000 of 21,000 bytes" in text and "--max-bytes" in text, text
    assert f"from {tmp_path / 'shakespeare' / 'val'}" in text
