"""ConvNet families: exact and compt growth of torchvision ResNet and ConvNeXt, forward and feature map."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models import resnet18, resnet34
from torchvision.models.convnext import ConvNeXt
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

import comptlib
import comptlib.families.convnet as convnet
from comptlib import GrowthError
from comptlib.families.convnet import (
    CONVNEXT_WIDTH_ERROR,
    ConvNeXtGrower,
    ResNetGrower,
    convnet_forward,
    convnext_dims,
    resnet,
    resnet_dims,
)
from comptlib.families.convnet import convnext as build_convnext

EXACT = 1e-5
BLOCKS = (BasicBlock, Bottleneck)


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every weight, BatchNorm statistic, LayerNorm gamma and layer scale non-trivial (and eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            scale = 0.3 if param.dim() == 1 else 0.5 * param.std().clamp_min(0.05).item()
            param.add_(torch.randn(param.shape, generator=gen) * scale)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.3, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.num_batches_tracked.fill_(7)
            if hasattr(module, "layer_scale"):
                module.layer_scale.uniform_(0.2, 1.0, generator=gen)
    return model.eval()


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def convnext(widths: list[int], depths: list[int], num_classes: int = 10) -> ConvNeXt:
    return build_convnext(widths, depths, num_classes)


# -- ResNet -------------------------------------------------------------------


def test_resnet_helper_builds_plain_torchvision_resnet() -> None:
    model = resnet(Bottleneck, [1, 2], [4, 8], num_classes=5, stem=6)
    assert type(model) is ResNet
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    dims = resnet_dims(model)
    assert dims["num_stages"] == 2 and dims["stem_channels"] == 6
    assert (dims["stage1_channels"], dims["stage1_inner"], dims["stage2_blocks"]) == (16, 4, 2)
    assert model(images(2)).shape == (2, 5)


@pytest.mark.parametrize(
    ("block", "layers"), [(BasicBlock, [2, 2, 2, 2]), (Bottleneck, [3, 4, 6, 3])], ids=["r18", "r50"]
)
@pytest.mark.parametrize("widths", [[8, 16, 32, 64], [6, 12, 24, 48]], ids=["x2", "x1.5"])
def test_resnet_width_growth_is_exact(block: type[nn.Module], layers: list[int], widths: list[int]) -> None:
    source = perturb(resnet(block, layers, [4, 8, 16, 32], 10))
    target = resnet(block, layers, widths, 10)
    grower = ResNetGrower()
    grower.grow(source, target)
    check = grower.check(source, target, images())
    assert check.exact and check.max_rel < EXACT


@pytest.mark.parametrize("block", BLOCKS)
def test_resnet_depth_and_width_growth_is_exact(block: type[nn.Module]) -> None:
    source = perturb(resnet(block, [1, 2, 1], [4, 6, 8], 10))
    target = resnet(block, [3, 2, 2], [4, 8, 12], 10)
    grower = ResNetGrower()
    grower.grow(source, target)
    assert grower.check(source, target, images()).max_rel < EXACT
    new = target.layer1[1]
    last = new.bn3 if block is Bottleneck else new.bn2
    assert not last.weight.any() and not last.bias.any()


def test_resnet18_grows_exactly_into_resnet34() -> None:
    source = perturb(resnet18(num_classes=10))
    target = resnet34(num_classes=10)
    grower = ResNetGrower()
    grower.grow(source, target)
    assert grower.check(source, target, images(2)).max_rel < EXACT


@pytest.mark.parametrize("block", BLOCKS)
def test_resnet_exact_in_train_mode(block: type[nn.Module]) -> None:
    """BatchNorm with batch statistics is per channel, so silenced channels stay silent in train mode."""
    source = perturb(resnet(block, [1, 1], [4, 8], 10)).train()
    target = resnet(block, [2, 1], [8, 12], 10).train()
    ResNetGrower().grow(source, target)
    x = images(6)
    a, b = source(x), target(x)
    assert (a - b).abs().max() <= EXACT * a.abs().max()
    for s_bn, t_bn in ((source.bn1, target.bn1), (source.layer2[0].bn1, target.layer2[0].bn1)):
        n = s_bn.num_features
        torch.testing.assert_close(t_bn.running_mean[:n], s_bn.running_mean)
        torch.testing.assert_close(t_bn.running_var[:n], s_bn.running_var)


def test_resnet_copies_batchnorm_statistics_for_every_channel() -> None:
    source = perturb(resnet(BasicBlock, [1, 1], [4, 8], 10))
    target = resnet(BasicBlock, [1, 1], [6, 12], 10)
    with torch.no_grad():
        for bn in (m for m in target.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.fill_(5.0)
            bn.running_var.fill_(5.0)
    ResNetGrower().grow(source, target)
    pairs = [(s, t) for s, t in zip(source.modules(), target.modules()) if isinstance(s, nn.BatchNorm2d)]
    assert len(pairs) == 6
    for s, t in pairs:
        n = s.num_features
        assert torch.equal(t.running_mean[:n], s.running_mean) and torch.equal(t.running_var[:n], s.running_var)
        assert not t.running_mean[n:].any() and torch.equal(t.running_var[n:], torch.ones(t.num_features - n))
        assert torch.equal(t.weight[:n], s.weight) and torch.equal(t.bias[:n], s.bias)
        assert t.num_batches_tracked.item() == 7


def test_resnet_new_channels_are_live_and_learn() -> None:
    """New channels compute (they are not silenced to a dead ReLU) and their readers get gradients at once."""
    source = perturb(resnet(BasicBlock, [1], [4], 10)).train()
    target = resnet(BasicBlock, [1], [8], 10).train()
    ResNetGrower().grow(source, target)
    out = convnet_forward(target, (images(4), torch.tensor([0, 1, 2, 3])))
    assert out.features[:, 4:].abs().sum() > 0
    out.loss.backward()
    assert not target.layer1[0].conv1.weight[:4, 4:].any()
    assert target.layer1[0].conv1.weight.grad[:4, 4:].abs().sum() > 0
    assert target.fc.weight.grad[:, 4:].abs().min() > 0


def test_resnet_noise_keeps_exact_growth_exact() -> None:
    source = perturb(resnet(Bottleneck, [1, 1], [4, 8], 10))
    plain, noisy = resnet(Bottleneck, [2, 1], [8, 12], 10), resnet(Bottleneck, [2, 1], [8, 12], 10)
    noisy.load_state_dict(plain.state_dict())
    ResNetGrower().grow(source, plain)
    grower = ResNetGrower(noise=0.5, seed=3)
    grower.grow(source, noisy)
    assert grower.check(source, noisy, images()).max_rel < EXACT
    assert not torch.equal(plain.layer2[0].conv1.weight, noisy.layer2[0].conv1.weight)
    assert torch.equal(plain.layer2[0].conv1.weight[:8, :16], noisy.layer2[0].conv1.weight[:8, :16])


def test_resnet_compt_copies_corners_and_duplicates_blocks() -> None:
    source = perturb(resnet(BasicBlock, [1, 2], [4, 8], 10))
    target = resnet(BasicBlock, [2, 4], [6, 12], 10)
    grower = ResNetGrower("compt")
    grower.grow(source, target)
    assert torch.equal(target.conv1.weight[:4], source.conv1.weight)
    assert torch.equal(target.fc.weight[:, :8], source.fc.weight) and torch.equal(target.fc.bias, source.fc.bias)
    for j, k in enumerate([0, 0, 1, 1]):  # l -> 2l, 2l+1
        s_conv, t_conv = source.layer2[k].conv2.weight, target.layer2[j].conv2.weight
        assert torch.equal(t_conv[:8, :8], s_conv)
    assert torch.equal(target.layer1[1].bn1.running_var[:4], source.layer1[0].bn1.running_var)
    assert target.layer1[1].downsample is None and grower.feature_map(source, target) is None
    assert not grower.check(source, target, images()).exact


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ({"layers": [1, 2], "widths": [8, 12]}, "stage2_channels shrinks: 16 -> 12"),
        ({"layers": [1, 2, 1], "widths": [8, 16, 32]}, "num_stages must be equal"),
        ({"layers": [1, 2], "widths": [8, 32], "num_classes": 7}, "num_classes must be equal"),
        ({"layers": [1, 1], "widths": [8, 32]}, "stage2_blocks shrinks: 2 -> 1"),
        ({"layers": [1, 2], "widths": [8, 16]}, "not larger"),
        ({"layers": [1, 2], "widths": [8, 16], "stem": 16}, "stage1 downsample"),
    ],
)
def test_resnet_impossible_growth_names_the_dimension(target: dict, match: str) -> None:
    source = resnet(BasicBlock, [1, 2], [8, 16], 10)
    with pytest.raises(GrowthError, match=match):
        ResNetGrower().grow(source, resnet(BasicBlock, **{"num_classes": 10, **target}))


def test_resnet_rejects_other_models_and_mixed_blocks() -> None:
    small = resnet(BasicBlock, [1], [4], 10)
    with pytest.raises(TypeError, match="ResNet"):
        ResNetGrower().validate(small, nn.Linear(2, 2))
    with pytest.raises(TypeError, match="BasicBlock -> Bottleneck"):
        ResNetGrower().validate(small, resnet(Bottleneck, [1], [4], 10))
    mixed = resnet(BasicBlock, [1, 1], [4, 8], 10)
    mixed.layer2 = resnet(Bottleneck, [1, 1], [2, 4], 10).layer2
    with pytest.raises(TypeError, match="one block type"):
        ResNetGrower().validate(small, mixed)


@settings(max_examples=12, deadline=None)
@given(
    block=st.sampled_from(BLOCKS),
    widths=st.lists(st.integers(2, 6), min_size=1, max_size=3),
    extra=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2)), min_size=3, max_size=3),
    noise=st.sampled_from([0.0, 0.3]),
)
def test_resnet_exact_growth_property(block: type[nn.Module], widths: list[int], extra: list, noise: float) -> None:
    """Any widths and depths that do not shrink, with or without noise, give the same function."""
    depths = [1] * len(widths)
    big_widths = [w + dw for w, (dw, _) in zip(widths, extra)]
    big_depths = [d + dd for d, (_, dd) in zip(depths, extra)]
    if big_widths == widths and big_depths == depths:
        big_widths[0] += 1
    source = perturb(resnet(block, depths, widths, 3))
    target = resnet(block, big_depths, big_widths, 3)
    grower = ResNetGrower(noise=noise)
    grower.grow(source, target)
    assert grower.check(source, target, images(2)).max_rel < EXACT


# -- ConvNeXt -----------------------------------------------------------------


def test_convnext_depth_growth_is_exact() -> None:
    source = perturb(convnext([8, 16, 32, 64], [1, 1, 3, 1]))
    target = convnext([8, 16, 32, 64], [3, 3, 9, 3])  # convnext_tiny's depths
    grower = ConvNeXtGrower(noise=0.3)
    grower.grow(source, target)
    check = grower.check(source, target, images())
    assert check.exact and check.max_rel < EXACT
    assert not target.features[1][1].layer_scale.any()
    assert convnext_dims(target)["stage1_blocks"] == 3


def test_convnext_width_growth_needs_approximate() -> None:
    source, target = convnext([8, 16], [1, 1]), convnext([16, 32], [1, 1])
    with pytest.raises(GrowthError, match=r"stage1_channels 8 -> 16 .*LayerNorm.*approximate=True"):
        ConvNeXtGrower().grow(source, target)


@pytest.mark.parametrize("widths", [[16, 32], [12, 24]], ids=["x2", "x1.5"])
def test_convnext_approximate_width_growth_error_is_bounded(widths: list[int]) -> None:
    source = perturb(convnext([8, 16], [1, 1]))
    target = convnext(widths, [2, 1])
    grower = ConvNeXtGrower(approximate=True)
    assert grower.approximate
    grower.grow(source, target)
    check = grower.check(source, target, images(8))
    assert not check.exact
    assert 0 < check.max_rel < CONVNEXT_WIDTH_ERROR
    # The readers of the residual stream still see exactly its old channels: the fixed map holds as well.
    teacher = convnet_forward(source, (images(8), torch.zeros(8, dtype=torch.long))).features
    student = convnet_forward(target, (images(8), torch.zeros(8, dtype=torch.long))).features
    error = (student @ grower.feature_map(source, target) - teacher).abs().max()
    assert error < CONVNEXT_WIDTH_ERROR * teacher.abs().max()


def test_convnext_compt_copies_corners_and_duplicates_blocks() -> None:
    source = perturb(convnext([8, 16], [1, 2]))
    target = convnext([12, 24], [2, 4])
    comptlib.grow(source, target, "compt")
    for j, k in enumerate([0, 0, 1, 1]):
        s_block, t_block = source.features[3][k], target.features[3][j]
        assert torch.equal(t_block.layer_scale[:16], s_block.layer_scale)
        assert torch.equal(t_block.block[3].weight[:64, :16], s_block.block[3].weight)
    assert torch.equal(target.features[2][1].weight[:16, :8], source.features[2][1].weight)
    assert torch.equal(target.classifier[2].weight[:, :16], source.classifier[2].weight)


def test_convnext_rejects_stage_changes_and_other_models() -> None:
    with pytest.raises(GrowthError, match="num_stages"):
        ConvNeXtGrower().validate(convnext([8, 16], [1, 1]), convnext([8, 16, 32], [1, 1, 1]))
    with pytest.raises(GrowthError, match="stage2_channels shrinks"):
        ConvNeXtGrower(approximate=True).validate(convnext([8, 16], [1, 1]), convnext([8, 12], [1, 1]))
    with pytest.raises(TypeError, match="ConvNeXt"):
        ConvNeXtGrower().validate(convnext([8, 16], [1, 1]), resnet(BasicBlock, [1], [4], 10))


# -- Families -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("small", "large", "name"),
    [
        (lambda: resnet(Bottleneck, [1, 1], [4, 8], 10), lambda: resnet(Bottleneck, [1, 2], [8, 16], 10), "resnet"),
        (lambda: convnext([8, 16], [1, 1]), lambda: convnext([8, 16], [1, 2]), "convnext"),
    ],
)
def test_family_forward_and_exact_feature_map(small, large, name: str) -> None:
    source, target = perturb(small()), large().eval()
    family = comptlib.family_of(source)
    assert family.name == name and family.forward is convnet_forward and family.dims(target)
    grower = family.grower("exact")
    grower.grow(source, target)
    batch = (images(), torch.tensor([0, 1, 2, 3]))
    out_s, out_t = convnet_forward(source, batch), convnet_forward(target, batch)
    torch.testing.assert_close(out_s.logits, source(batch[0]))
    assert torch.isfinite(out_s.loss) and out_s.features.shape == (4, _head_width(source))
    fmap = grower.feature_map(source, target)
    torch.testing.assert_close(out_t.features @ fmap, out_s.features, atol=1e-5, rtol=1e-5)


def _head_width(model: nn.Module) -> int:
    return convnet._classifier(model).in_features
