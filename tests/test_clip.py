"""Hugging Face CLIP: exact and compt growth of both towers, the contrastive and transfer losses,
retrieval metrics, the emoji and CSV image-text data, and a two-model chain."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from comptlib import Chain
from comptlib.families.clip import (
    CLIPFeatureMSE,
    CLIPGrower,
    CLIPLogitKL,
    build_clip,
    clip_forward,
    evaluate_clip,
    retrieval_metrics,
)
from comptlib.family import Outputs
from comptlib.grower import GrowthError
from comptlib.transferer import LogitKL, freeze
from conftest import perturb

VOCAB = 50
# A tower: (hidden_size, num_attention_heads, intermediate_size, num_hidden_layers).
SMALL = (32, 2, 64, 2)


def clip(text=SMALL, vision=SMALL, *, projection_dim=16, image_size=16, patch_size=4, vocab_size=VOCAB) -> CLIPModel:
    torch.manual_seed(sum(text) + 7 * sum(vision) + projection_dim)
    keys = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")
    text_config = dict(zip(keys, text), vocab_size=vocab_size, max_position_embeddings=16)
    text_config |= {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None}
    vision_config = dict(zip(keys, vision), image_size=image_size, patch_size=patch_size)
    return CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim))


def batch(n: int = 5, image_size: int = 16) -> dict[str, torch.Tensor]:
    """Random images and right-padded token ids, each sequence ending in the end-of-text id 1."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([9, 7, 5, 3, 8, 2, 6, 4])[:n]
    mask = (torch.arange(9) < lengths[:, None]).long()
    ids = torch.randint(3, VOCAB, (n, 9), generator=gen)
    ids[torch.arange(n), lengths - 1] = 1
    ids[mask == 0] = 0
    return {
        "pixel_values": torch.randn(n, 3, image_size, image_size, generator=gen),
        "input_ids": ids,
        "attention_mask": mask,
    }


CASES = {
    "widths x2 (vision tiled x2)": ((32, 2, 64, 2), (64, 4, 64, 2)),
    "text 32->48, vision x3": ((48, 3, 64, 2), (96, 6, 64, 2)),
    "head_dim grows": ((64, 2, 64, 2), (64, 2, 64, 2)),
    "MLP and depth": ((32, 2, 100, 3), (32, 2, 100, 4)),
    "everything": ((80, 5, 200, 5), (64, 4, 150, 3)),
}


@pytest.mark.parametrize("noise", [0.0, 0.5])
@pytest.mark.parametrize("case", CASES)
def test_exact_growth_keeps_image_and_text_embeddings(case: str, noise: float) -> None:
    small, large = perturb(clip()), clip(*CASES[case])  # perturb: LayerNorm gammas, logit_scale... all non-trivial
    grower = CLIPGrower("exact", noise=noise, seed=1)
    grower.grow(small, large)
    checks = grower.check_towers(small, large, batch())
    for check in checks.values():
        assert check.exact
        assert check.max_rel < 1e-5, checks
    assert large.training


def test_projection_dim_grows_with_zero_new_embedding_dims() -> None:
    small, large = perturb(clip()), clip((64, 4, 64, 2), (64, 4, 64, 2), projection_dim=24)
    grower = CLIPGrower()
    grower.grow(small, large)
    assert grower.check(small, large, batch()).max_rel < 1e-5  # the source's embeddings are zero-padded to compare
    small.eval(), large.eval()
    with torch.no_grad():
        s, t = clip_forward(small, batch()), clip_forward(large, batch())
    torch.testing.assert_close(t.features @ grower.feature_map(small, large), s.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t.logits, s.logits, rtol=1e-5, atol=1e-5)


def test_tiling_noise_cancels_between_copies() -> None:
    small, quiet, noisy = perturb(clip()), clip(SMALL, (64, 4, 64, 2)), clip(SMALL, (64, 4, 64, 2))
    CLIPGrower("exact").grow(small, quiet)
    CLIPGrower("exact", noise=1.0, seed=3).grow(small, noisy)
    quiet_q = quiet.vision_model.encoder.layers[0].self_attn.q_proj.weight[:32]
    noisy_q = noisy.vision_model.encoder.layers[0].self_attn.q_proj.weight[:32]
    torch.testing.assert_close(quiet_q[:, :32], quiet_q[:, 32:])  # without noise the two copies read W/2 each
    assert (noisy_q[:, :32] - noisy_q[:, 32:]).abs().max() > 1e-2  # with it they differ...
    torch.testing.assert_close(noisy_q[:, :32] + noisy_q[:, 32:], quiet_q[:, :32] * 2)  # ...but still sum to W


def test_non_integer_vision_width_ratio_is_refused_unless_approximate() -> None:
    small, large = perturb(clip()), clip(SMALL, (48, 3, 64, 2))
    with pytest.raises(GrowthError, match=r"vision_hidden_size 32 -> 48 .*pre_layrnorm"):
        CLIPGrower("exact").validate(small, large)
    grower = CLIPGrower("exact", approximate=True)
    assert grower.approximate is True
    grower.grow(small, large)
    checks = grower.check_towers(small, large, batch())
    assert not grower.keeps_function(small, large) and not checks["image"].exact
    assert checks["text"].max_rel < 1e-5  # the text tower is still exact
    assert 1e-5 < checks["image"].max_rel < 0.1, checks  # close, not exact: pre_layrnorm's new dims hold mean(beta)


def test_compt_copies_q_to_q_k_to_k_v_to_v_and_duplicates_blocks() -> None:
    small, large = perturb(clip()), clip((64, 4, 128, 4), (64, 4, 128, 4), projection_dim=24)
    grower = CLIPGrower("compt")
    grower.grow(small, large)
    for tower in ("text_model", "vision_model"):
        s_layers, t_layers = getattr(small, tower).encoder.layers, getattr(large, tower).encoder.layers
        for j, tb in enumerate(t_layers):
            sb = s_layers[j // 2]  # the paper's l -> 2l, 2l+1
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                s_lin, t_lin = getattr(sb.self_attn, proj), getattr(tb.self_attn, proj)
                torch.testing.assert_close(t_lin.weight[:32, :32], s_lin.weight)
                torch.testing.assert_close(t_lin.bias[:32], s_lin.bias)
    torch.testing.assert_close(large.visual_projection.weight[:16, :32], small.visual_projection.weight)
    assert large.text_model.encoder.layers[0].mlp.fc1.weight[64:].abs().sum() > 0  # outside the corner: own init
    report = grower.check(small, large, batch())
    assert not report.exact and report.max_rel > 1e-3
    assert grower.feature_map(small, large) is None


@pytest.mark.parametrize(
    ("target", "dim"),
    [
        ({"text": (16, 1, 64, 2)}, "text_hidden_size shrinks"),
        ({"vision": (32, 2, 64, 1)}, "vision_num_hidden_layers shrinks"),
        ({"projection_dim": 8}, "projection_dim shrinks"),
        ({"vocab_size": VOCAB + 1}, "text_vocab_size must be equal"),
        ({"image_size": 32}, "vision_image_size must be equal"),
        ({"patch_size": 8}, "vision_patch_size must be equal"),
        ({"vision": (64, 8, 64, 2)}, "vision_head_dim shrinks"),
        ({}, "not larger"),
    ],
)
def test_impossible_growth_names_the_dimension(target: dict, dim: str) -> None:
    with pytest.raises(GrowthError, match=dim):
        CLIPGrower().validate(clip(), clip(**target))


def test_non_clip_models_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="CLIPModel"):
        CLIPGrower().validate(clip(), torch.nn.Linear(2, 2))


def test_contrastive_and_transfer_losses_train_the_student_only() -> None:
    teacher, student = freeze(perturb(clip())), clip((64, 4, 64, 2), (64, 4, 64, 2), projection_dim=24)
    CLIPGrower("compt").grow(teacher, student)  # no feature map: the embedding sizes differ, so projectors
    data = batch()
    with torch.no_grad():
        t_out = clip_forward(teacher, data)
    s_out = clip_forward(student, data)
    transfer = CLIPFeatureMSE()
    transfer.setup(s_out, t_out)
    assert transfer.image.proj.weight.shape == transfer.text.proj.weight.shape == (16, 24)
    kl = CLIPLogitKL()
    loss = s_out.loss + transfer(s_out, t_out) + kl(s_out, t_out)
    assert torch.isfinite(loss) and s_out.loss > 0 and kl(s_out, t_out) > 0
    loss.backward()
    for param in (
        student.logit_scale,
        student.vision_model.embeddings.patch_embedding.weight,
        transfer.text.proj.weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert student.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_feature_transfer_is_the_paper_loss_and_zero_right_after_exact_growth() -> None:
    teacher, student = perturb(clip()), clip((64, 4, 64, 2), (64, 4, 64, 2), projection_dim=24)
    grower = CLIPGrower()
    grower.grow(teacher, student)
    teacher.eval(), student.eval()
    with torch.no_grad():
        s_out, t_out = clip_forward(student, batch()), clip_forward(teacher, batch())
    transfer = CLIPFeatureMSE()
    transfer.setup(s_out, t_out, grower.feature_map(teacher, student))
    assert list(transfer.parameters()) == []  # the fixed map, no projector
    assert transfer(s_out, t_out).item() < 1e-9
    # Against other features it is 500 * [MSE(image) + MSE(text)] of the normalised embeddings.
    other = clip_forward(perturb(clip(), seed=1).eval(), batch())
    img, txt = (torch.nn.functional.normalize(e, dim=-1) for e in other.features.detach().chunk(2, dim=-1))
    s_img, s_txt = (s_out.features @ grower.feature_map(teacher, student)).chunk(2, dim=-1)
    expected = 500 * (torch.nn.functional.mse_loss(s_img, img) + torch.nn.functional.mse_loss(s_txt, txt))
    torch.testing.assert_close(transfer(s_out, other), expected)


def test_cross_modal_kl_averages_both_directions() -> None:
    logits = torch.randn(4, 4)
    out = lambda x: Outputs(loss=None, logits=x, features=x)  # noqa: E731
    kl = CLIPLogitKL()
    assert kl(out(logits), out(logits)).item() < 1e-7
    # A constant per image leaves each image's distribution over texts unchanged, not each text's over images.
    shifted = logits + torch.arange(4.0)[:, None]
    assert LogitKL(temperature=1.0).divergence(out(shifted), out(logits)).item() < 1e-6
    expected = LogitKL(temperature=1.0).divergence(out(shifted.T), out(logits.T)) / 2
    assert expected > 0.1
    torch.testing.assert_close(kl(out(shifted), out(logits)), expected, rtol=1e-5, atol=1e-6)


def test_retrieval_metrics_on_known_cases() -> None:
    image = torch.eye(10)
    perfect = retrieval_metrics(image, image.clone())
    assert perfect["recall@1"] == perfect["recall@5"] == 1.0
    text = image.clone()
    text[:4] = image[[1, 2, 3, 0]]  # four captions swapped around: those four pairs score 0 with their own
    swapped = retrieval_metrics(image, text)
    for key in ("i2t_recall@1", "t2i_recall@1", "i2t_recall@5", "t2i_recall@5"):
        assert swapped[key] == pytest.approx(0.6)
    constant = retrieval_metrics(torch.ones(10, 4), torch.ones(10, 4))
    assert constant["recall@5"] == 0.0  # ties count against the match


# -- data -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emoji():
    """The emoji loaders. No skip when the font is missing: the error names the install command."""
    from comptlib.image_text import emoji_loaders

    return emoji_loaders(batch_size=32, image_size=16, seed=0, val_fraction=0.1)


def test_emoji_pairs_are_real_captioned_images(emoji) -> None:
    from comptlib.image_text import EOS_ID, emoji_tokenizer, load_emoji

    pairs = load_emoji(16)
    assert 1200 < len(pairs) < 1500 and "closed umbrella" in pairs.captions
    assert pairs.images.shape[1:] == (3, 16, 16) and pairs.images.float().std() > 10  # not blank
    train, val = emoji
    assert len(train.dataset) + len(val.dataset) == len(pairs)
    b = next(iter(train))
    assert b["pixel_values"].shape == (32, 3, 16, 16) and b["input_ids"].shape == b["attention_mask"].shape
    lengths = b["attention_mask"].sum(1)
    assert (b["input_ids"][torch.arange(32), lengths - 1] == EOS_ID).all()  # each caption ends in end-of-text
    assert ((b["input_ids"] == EOS_ID).sum(1) == 1).all()
    v = next(iter(val))
    assert v["prompt_ids"].shape[:2] == (len(val.dataset), 3)
    held_out = set(map(tuple, v["input_ids"].tolist()))
    assert not held_out & set(map(tuple, train.dataset.columns["input_ids"].tolist()))  # disjoint split
    assert emoji_tokenizer().encode("closed umbrella")[-1] == EOS_ID


def test_glyph_pairs_show_each_training_character_in_a_random_face_and_hold_out_whole_characters() -> None:
    from comptlib.image_text import GLYPH_FACES, glyph_loaders, load_glyphs

    pairs = load_glyphs(32)
    assert 4000 < len(pairs) < 4300 and len(set(pairs.captions)) == len(pairs)  # one caption a character
    assert {"latin small letter a with acute", "braille pattern dots-258", "rightwards arrow"} <= set(pairs.captions)
    assert pairs.views.shape[:2] == (len(pairs), len(GLYPH_FACES)) and int(pairs.num_views.min()) >= 4
    inked = (pairs.views < 200).flatten(2).any(-1)  # a drawn view has ink; the unused ones stay white
    assert torch.equal(inked.sum(1), pairs.num_views)
    train, val = glyph_loaders(64, seed=0)
    assert len(train.dataset) + len(val.dataset) == len(pairs) and len(val.dataset) == 410
    torch.manual_seed(0)
    first = torch.stack([train.dataset[i]["pixel_values"] for i in range(64)])
    second = torch.stack([train.dataset[i]["pixel_values"] for i in range(64)])
    assert not torch.equal(first, second)  # another face drawn the second time
    faces = train.dataset.views[:64]  # each drawn image is one of its character's faces
    assert all(any(torch.equal(first[i], f) for f in faces[i]) for i in range(64))
    held_out = {tuple(r) for r in next(iter(val))["input_ids"].tolist()}
    assert not held_out & {tuple(r) for r in train.dataset.rows.columns["input_ids"].tolist()}


def test_hugging_face_pools_text_at_the_end_token(emoji) -> None:
    from comptlib.image_text import emoji_tokenizer

    model = build_clip(32, 1, vocab_size=emoji_tokenizer().vocab_size, image_size=16).eval()
    b = next(iter(emoji[1]))
    with torch.no_grad():
        out = model.text_model(input_ids=b["input_ids"][:8], attention_mask=b["attention_mask"][:8])
    last = b["attention_mask"][:8].sum(1) - 1
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[torch.arange(8), last])


def test_missing_font_error_gives_the_install_command(monkeypatch, tmp_path) -> None:
    from comptlib import image_text

    monkeypatch.delenv(image_text.FONT_ENV, raising=False)
    monkeypatch.setattr(image_text, "_FONT_FILE", tmp_path / "nowhere" / "NotoColorEmoji.ttf")
    with pytest.raises(FileNotFoundError, match="apt-get download fonts-noto-color-emoji && dpkg-deb -x"):
        image_text.emoji_font_path()


@pytest.mark.parametrize("sep", ["\t", ","])
def test_csv_pairs_in_open_clip_format(tmp_path, sep: str) -> None:
    from PIL import Image

    from comptlib.image_text import WordTokenizer, image_text_loaders, load_pairs_csv

    lines = [f"filepath{sep}title"]
    for i, color in enumerate(["red", "green", "blue", "yellow"]):
        Image.new("RGB", (20 + i, 12), color).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png{sep}a {color} square")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    pairs = load_pairs_csv(tmp_path / "pairs.csv", image_size=8)
    assert pairs.images.shape == (4, 3, 8, 8) and pairs.captions[2] == "a blue square"
    assert pairs.images[0, 0].float().mean() > 200 and pairs.images[0, 2].float().mean() < 50  # red
    tokenizer = WordTokenizer.from_texts(pairs.captions)
    train, val = image_text_loaders(pairs, tokenizer, batch_size=2, val_fraction=0.25)
    assert len(train.dataset) == 3 and len(val.dataset) == 1


# -- chain ------------------------------------------------------------------------
def test_two_model_clip_chain_fits_and_reports_recall(emoji) -> None:
    from comptlib.image_text import emoji_tokenizer

    vocab = emoji_tokenizer().vocab_size
    models = [
        build_clip(16, 1, vocab_size=vocab, image_size=16, patch_size=8, projection_dim=16),
        build_clip(32, 2, vocab_size=vocab, image_size=16, patch_size=8, projection_dim=16),
    ]
    train, val = emoji
    chain = Chain(models, budgets=[4, 2], unit="steps", progress=False).fit(train, val)
    grown = chain.history_[1]["val"][0]  # right after exact growth the student scores as its teacher did
    assert grown["recall@5"] == pytest.approx(chain.history_[0]["val"][-1]["recall@5"], abs=0.01)
    assert {"recall@1", "i2t_recall@5", "t2i_recall@5", "zero_shot_accuracy"} <= grown.keys()
    assert all(torch.isfinite(torch.tensor(chain.history_[1]["transfer_loss"])))
    assert chain.report_["metric"] == "recall@5" and chain.report_["acceleration_ratio"] > 1
    assert (
        evaluate_clip(chain.models_[1], val, torch.device("cpu"))["recall@5"] == chain.report_["models"][1]["recall@5"]
    )
