"""torchvision ``ResNet`` and ``ConvNeXt``: growth, feature tap and classification objective.

**ResNet, exact in eval and in train mode.** Every tensor is copied into its
leading corner, and the old channels ignore the new ones: each conv (and the
classifier) gets zero weights where an old output reads a new input. The new
channels compute freely from the target's random init: their convs, their
BatchNorms (running statistics reset to mean 0, variance 1) and the residual
additions only mix new channels with new channels. BatchNorm works per channel
with running and with batch statistics alike, so the old channels see exactly
the source's values in both modes. Silencing the new channels instead (BatchNorm
gamma = beta = 0) would also be exact, but a ReLU of exactly 0 passes no
gradient, so those channels would never train. A new block is the identity: its
last BatchNorm has gamma = beta = 0. It still trains, because its residual sum is not 0.

**ConvNeXt, exact in depth, approximate in width.** A new block with layer
scale 0 is the identity. Width cannot be kept exactly. A ConvNeXt block
normalises over channels (LayerNorm) straight after a depthwise convolution. A
new channel's depthwise filter sees only its own input, so no choice of new
channels can keep the LayerNorm statistics of the old ones. The approximate
operator (``approximate=True``) follows LEMON's mean-fill. The residual stream
``x`` becomes ``[x, mean(x), ...]``. Stem, downsampling and block writers get new
rows equal to the (layer-scale weighted) mean of their old rows. Every
LayerNorm gets gamma scaled by ``sqrt(d/D)`` and eps by ``d/D``, and new
channels' beta is the mean of the old beta. Readers of new channels get zero
columns. The LayerNorms that read the residual stream (downsampling, head) stay
exact. Two places are approximate:

- the stem LayerNorm writes the constant ``mean(beta)`` where ``mean(gamma * x_hat + beta)`` is due;
- each block's LayerNorm sees ``mean_kernel * mean(x)`` where ``mean(kernel_c * x_c)`` is due.

Both errors come from the spread of gamma and of the depthwise kernels over
channels. They vanish as the layer scales go to 0 (fresh blocks have 1e-6).
Measured relative logit errors (max |diff| / max |logit|):

- tiny random models with layer scales from 0.2 to 1, widths x1.5 to x2: 0.1% to 1.3%;
- a tiny ConvNeXt (16-32-64) trained for 300 steps on digits: 6.7% at x2 and
  5.0% at x1.5, with top-1 agreement of 99.7% and 100%;
- zero-filling the new channels instead does worse on that model: 11.8% and 7.7%.

:data:`CONVNEXT_WIDTH_ERROR` bounds these. :meth:`ConvNeXtGrower.check`
measures the error on real inputs and returns ``GrowthCheck(exact=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.convnext import CNBlock, CNBlockConfig, ConvNeXt
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from comptlib.families.classification import classify, evaluate_classifier
from comptlib.family import Family, Outputs, register_family
from comptlib.grower import Grower, GrowthError, Method, require_growth
from comptlib.ops import Canvas, ResidualStream, Writer, compt_depth_map, exact_depth_map, grow_norm, identity_block
from comptlib.portable import Spec, path_of
from comptlib.transferer import FeatureMSE, no_transfer

CONVNEXT_WIDTH_ERROR = 0.1
"""Bound on the relative logit error of approximate ConvNeXt width growth, from the measurements above."""

_RESNET_EQUAL = ("num_stages", "in_channels", "num_classes", "groups")
_CONVNEXT_EQUAL = ("num_stages", "downsamples", "in_channels", "num_classes")


def resnet(
    block: type[BasicBlock | Bottleneck],
    layers: Sequence[int],
    widths: Sequence[int],
    num_classes: int = 1000,
    *,
    stem: int | None = None,
    groups: int = 1,
    width_per_group: int = 64,
    in_channels: int = 3,
) -> ResNet:
    """A plain torchvision ``ResNet`` with any stage widths and 1 to 4 stages.

    torchvision fixes the widths at 64-128-256-512 (``widths`` are its
    ``planes``: a Bottleneck stage outputs ``4 * width`` channels). This builds
    the standard model on the meta device, so it costs nothing, and then swaps
    in a stem, stages (from torchvision's own ``_make_layer``) and classifier
    of the asked sizes, initialised as torchvision does. Stages past ``len(widths)`` are empty, so they are the identity.
    ``stem`` (default ``widths[0]``) is the stem's width; ``groups`` and
    ``width_per_group`` are torchvision's (``wide_resnet50_2`` has 128);
    ``in_channels`` is 1 for grey images.
    """
    if not 1 <= len(widths) <= 4 or len(layers) != len(widths) or min(layers) < 1:
        raise ValueError(f"need 1-4 stages with at least one block each, got layers={layers}, widths={widths}")
    with torch.device("meta"):
        model = ResNet(block, [1, 1, 1, 1], num_classes=num_classes, groups=groups, width_per_group=width_per_group)
    model.inplanes = widths[0] if stem is None else stem
    model.conv1 = nn.Conv2d(in_channels, model.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(model.inplanes)
    for i in range(4):
        if i < len(widths):
            stage = model._make_layer(block, widths[i], layers[i], stride=1 if i == 0 else 2)
        else:
            stage = nn.Sequential()
        setattr(model, f"layer{i + 1}", stage)
    model.fc = nn.Linear(model.inplanes, num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def convnext(widths: Sequence[int], depths: Sequence[int], num_classes: int = 1000, in_channels: int = 3) -> ConvNeXt:
    """A plain torchvision ``ConvNeXt`` with the given stage widths and blocks per stage (``in_channels`` 1: grey).

    >>> convnext([16, 32], [1, 2], num_classes=10).classifier[2].in_features
    32
    """
    if len(widths) != len(depths) or not widths:
        raise ValueError(f"need one depth per stage width, got widths={widths}, depths={depths}")
    outs = [*widths[1:], None]
    model = ConvNeXt([CNBlockConfig(w, o, n) for w, o, n in zip(widths, outs, depths)], num_classes=num_classes)
    if in_channels != 3:  # torchvision's stem reads RGB: the same patchify conv, initialised as torchvision does
        stem = model.features[0][0]
        model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride)
        nn.init.trunc_normal_(model.features[0][0].weight, std=0.02)
        nn.init.zeros_(model.features[0][0].bias)
    return model


def _resnet_stages(model: ResNet) -> list[nn.Sequential]:
    return [stage for stage in (model.layer1, model.layer2, model.layer3, model.layer4) if len(stage)]


def _last_bn(block: BasicBlock | Bottleneck) -> nn.BatchNorm2d:
    """The BatchNorm that ends a block's residual branch."""
    return block.bn3 if isinstance(block, Bottleneck) else block.bn2


def resnet_dims(model: ResNet) -> dict[str, int]:
    """The sizes of a torchvision ResNet that a chain grows or keeps (stages numbered from 1)."""
    stages = _resnet_stages(model)
    dims = {
        "num_stages": len(stages),
        "in_channels": model.conv1.in_channels,
        "num_classes": model.fc.out_features,
        "groups": model.groups,
        "stem_channels": model.conv1.out_channels,
    }
    for i, stage in enumerate(stages, 1):
        dims[f"stage{i}_channels"] = _last_bn(stage[0]).num_features
        dims[f"stage{i}_inner"] = stage[0].conv1.out_channels
        dims[f"stage{i}_blocks"] = len(stage)
    return dims


def resnet_spec(model: ResNet) -> Spec:
    """The :func:`resnet` call that rebuilds ``model``'s modules (a dilation, say, is saved as a changed attribute)."""
    stages = _resnet_stages(model)
    block = type(stages[0][0])
    kwargs = {
        "block": block,
        "layers": [len(stage) for stage in stages],
        "widths": [_last_bn(stage[0]).num_features // block.expansion for stage in stages],
        "num_classes": model.fc.out_features,
        "stem": model.conv1.out_channels,
        "groups": model.groups,
        "width_per_group": model.base_width,
        "in_channels": model.conv1.in_channels,
    }
    return Spec(path_of(resnet), kwargs)


def convnext_spec(model: ConvNeXt) -> Spec:
    """The :func:`convnext` call that rebuilds ``model``'s modules (stochastic depth and eps are saved as attributes)."""
    dims = convnext_dims(model)
    widths = [dims[f"stage{i}_channels"] for i in range(1, dims["num_stages"] + 1)]
    depths = [dims[f"stage{i}_blocks"] for i in range(1, dims["num_stages"] + 1)]
    kwargs = {
        "widths": widths,
        "depths": depths,
        "num_classes": dims["num_classes"],
        "in_channels": dims["in_channels"],
    }
    return Spec(path_of(convnext), kwargs)


def _convnext_stages(model: ConvNeXt) -> list[nn.Sequential]:
    """The block stages; ``features`` alternates stem, stage, downsampling, stage, ..."""
    return list(model.features[1::2])


def convnext_dims(model: ConvNeXt) -> dict[str, int]:
    """The sizes of a torchvision ConvNeXt that a chain grows or keeps (stages numbered from 1)."""
    stem = model.features[0][0]
    stage_inputs = [stem, *(ds[1] for ds in model.features[2::2])]
    dims = {
        "num_stages": len(_convnext_stages(model)),
        "downsamples": len(model.features[2::2]),
        "in_channels": stem.in_channels,
        "num_classes": _classifier(model).out_features,
    }
    for i, (conv, stage) in enumerate(zip(stage_inputs, _convnext_stages(model)), 1):
        dims[f"stage{i}_channels"] = conv.out_channels
        dims[f"stage{i}_blocks"] = len(stage)
    dims["head_channels"] = _classifier(model).in_features
    return dims


def _convnext_widths(dims: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in dims.items() if k.endswith("_channels") and k != "in_channels"}


def _classifier(model: nn.Module) -> nn.Linear:
    """The final Linear layer, which reads the pooled features."""
    if isinstance(model, ResNet):
        return model.fc
    if isinstance(model, ConvNeXt):
        return model.classifier[-1]
    raise TypeError(f"not a torchvision ResNet or ConvNeXt: {type(model).__name__}")


def _overlap(a: torch.Tensor, b: torch.Tensor) -> tuple[slice, ...]:
    """The leading corner that two tensors share: where a source tensor lands in its target."""
    return tuple(slice(0, min(m, n)) for m, n in zip(a.shape, b.shape))


def _copy_stats(src: nn.BatchNorm2d, tgt: nn.BatchNorm2d) -> None:
    """Copy running statistics channel by channel; new channels start fresh (mean 0, variance 1)."""
    n = min(src.num_features, tgt.num_features)
    tgt.running_mean.zero_()
    tgt.running_mean[:n] = src.running_mean[:n]
    tgt.running_var.fill_(1.0)
    tgt.running_var[:n] = src.running_var[:n]
    tgt.num_batches_tracked.copy_(src.num_batches_tracked)


class _ConvGrower(Grower):
    """What the ConvNet growers share: corner copies with BatchNorm statistics, block maps."""

    defers_init = True

    def feature_map(self, source: nn.Module, target: nn.Module) -> torch.Tensor | None:
        """After exact growth the source's pooled features are the leading slice of the target's.

        After ConvNeXt's approximate width growth the slice is approximate too.
        """
        if not self.exact:
            return None
        return torch.eye(_classifier(target).in_features, _classifier(source).in_features)

    def _copy(self, src: nn.Module, tgt: nn.Module, writer: Writer, *, isolate: bool = False) -> None:
        """Copy every parameter and BatchNorm statistic of ``src`` into the leading corner of ``tgt``'s namesake.

        With ``isolate``, every weight is 0 where an old output reads a new
        input, so new channels cannot reach the old ones.
        """
        modules = dict(src.named_modules())
        for name, t_mod in tgt.named_modules():
            s_mod = modules.get(name)
            if s_mod is None:  # compt only: a module the duplicated source block lacks keeps its init
                continue
            for pname, param in t_mod.named_parameters(recurse=False):
                value = getattr(s_mod, pname)
                canvas = Canvas(param)
                corner = _overlap(value, param)
                canvas.put(corner, value[corner])
                if isolate and value.dim() > 1:
                    canvas.put((slice(0, value.shape[0]), slice(value.shape[1], None)), 0.0)
                writer(param, canvas)
            if isinstance(t_mod, nn.BatchNorm2d):
                _copy_stats(s_mod, t_mod)

    def _blocks(
        self, s_stages: Sequence[nn.Sequential], t_stages: Sequence[nn.Sequential]
    ) -> list[tuple[nn.Module | None, nn.Module]]:
        """Each target block with the source block it copies; ``None`` marks a new identity block."""
        depth_map = exact_depth_map if self.exact else compt_depth_map
        return [
            (None if k is None else s_stage[k], tb)
            for s_stage, t_stage in zip(s_stages, t_stages)
            for tb, k in zip(t_stage, depth_map(len(s_stage), len(t_stage)))
        ]


class ResNetGrower(_ConvGrower):
    """Grows a torchvision ``ResNet`` in stem, stage and inner widths and in blocks per stage."""

    def validate(self, source: nn.Module, target: nn.Module) -> None:
        kinds = []
        self.require_type(source, target, ResNet, "torchvision")
        for role, model in (("source", source), ("target", target)):
            types = {type(b) for stage in _resnet_stages(model) for b in stage}
            if len(types) != 1:
                names = sorted(t.__name__ for t in types) or ["none"]
                raise TypeError(f"ResNetGrower needs one block type per model, the {role} has {', '.join(names)}")
            kinds.append(types.pop())
        if kinds[0] is not kinds[1]:
            raise TypeError(f"block types differ: {kinds[0].__name__} -> {kinds[1].__name__}")
        s, t = resnet_dims(source), resnet_dims(target)
        require_growth(s, t, grow=tuple(k for k in s if k not in _RESNET_EQUAL), equal=_RESNET_EQUAL)
        if s["groups"] != 1:
            raise GrowthError(f"groups: grouped convolutions (ResNeXt, groups={s['groups']}) are not supported")
        if self.exact:
            for i, (ss, ts) in enumerate(zip(_resnet_stages(source), _resnet_stages(target)), 1):
                if (ss[0].downsample is None) != (ts[0].downsample is None):
                    raise GrowthError(
                        f"stage{i} downsample: only one of source and target projects the shortcut "
                        f"(stem or stage widths changed by different factors); no exact operator exists"
                    )

    def init_module(self, model: nn.Module, name: str, module: nn.Module) -> None:
        """torchvision's ResNet init: He-normal convolutions (fan out), BatchNorm at 1 and 0."""
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            super().init_module(model, name, module)

    @torch.no_grad()
    def grow(self, source: nn.Module, target: nn.Module) -> nn.Module:
        self.validate(source, target)
        with self.growing(source, target):
            writer = self.writer()
            pairs: list[tuple[nn.Module, nn.Module]] = [(source.conv1, target.conv1), (source.bn1, target.bn1)]
            for sb, tb in self._blocks(_resnet_stages(source), _resnet_stages(target)):
                if sb is None:
                    bn = _last_bn(tb)
                    identity_block(tb.parameters(), (bn.weight, bn.bias), writer)
                else:
                    pairs.append((sb, tb))
            pairs.append((source.fc, target.fc))
            for src, tgt in pairs:
                self._copy(src, tgt, writer, isolate=self.exact)
        return target


class ConvNeXtGrower(_ConvGrower):
    """Grows a torchvision ``ConvNeXt`` in depth (exact) and width (``approximate=True`` or ``"compt"``)."""

    def __init__(
        self, method: Method = "exact", *, approximate: bool = False, noise: float = 0.0, seed: int | None = None
    ) -> None:
        super().__init__(method, noise=noise, seed=seed)
        self.approximate = approximate

    def validate(self, source: nn.Module, target: nn.Module) -> None:
        self.require_type(source, target, ConvNeXt, "torchvision")
        for role, model in (("source", source), ("target", target)):
            other = {type(b).__name__ for stage in _convnext_stages(model) for b in stage} - {"CNBlock"}
            if other:
                raise TypeError(f"ConvNeXtGrower needs CNBlock blocks, the {role} has {', '.join(sorted(other))}")
        s, t = convnext_dims(source), convnext_dims(target)
        require_growth(s, t, grow=tuple(k for k in s if k not in _CONVNEXT_EQUAL), equal=_CONVNEXT_EQUAL)
        if self.exact and not self.approximate:
            for key, width in _convnext_widths(s).items():
                if t[key] != width:
                    raise GrowthError(
                        f"{key} {width} -> {t[key]} cannot grow exactly: each ConvNeXt block normalises over "
                        f"channels (LayerNorm) right after a depthwise convolution, whose new channels see only "
                        f"themselves, so they cannot keep the old channels' statistics; pass approximate=True "
                        f"(check() measures the error) or use method='compt'"
                    )

    def keeps_function(self, source: nn.Module, target: nn.Module) -> bool:
        """False after an approximate width growth, True when only depth grows."""
        return self.exact and _convnext_widths(convnext_dims(source)) == _convnext_widths(convnext_dims(target))

    def init_module(self, model: nn.Module, name: str, module: nn.Module) -> None:
        """torchvision's ConvNeXt init: truncated-normal (0.02) convolutions and linears, layer scale 1e-6 (its default)."""
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            return
        super().init_module(model, name, module)
        if isinstance(module, CNBlock):
            nn.init.constant_(module.layer_scale, 1e-6)

    @torch.no_grad()
    def grow(self, source: nn.Module, target: nn.Module) -> nn.Module:
        self.validate(source, target)
        with self.growing(source, target):
            writer = self.writer()
            if self.exact:
                self._grow_mean_fill(source, target, writer)
            else:
                pairs = [(source.features[0], target.features[0]), (source.classifier, target.classifier)]
                pairs += list(zip(source.features[2::2], target.features[2::2]))
                pairs += self._blocks(_convnext_stages(source), _convnext_stages(target))
                for src, tgt in pairs:
                    self._copy(src, tgt, writer)
        return target

    # -- exact / approximate (mean-fill) -----------------------------------------
    def _grow_mean_fill(self, source: ConvNeXt, target: ConvNeXt, writer: Writer) -> None:
        """Exact when only depth grows; the approximate mean-fill of the module docstring when width does."""
        (s_conv, s_norm), (t_conv, t_norm) = source.features[0], target.features[0]
        self._layer(s_conv, t_conv, writer, mean_fill=True)
        _norm(s_norm, t_norm, writer)
        for (s_norm, s_conv), (t_norm, t_conv) in zip(source.features[2::2], target.features[2::2]):
            _norm(s_norm, t_norm, writer)
            self._layer(s_conv, t_conv, writer, mean_fill=True)
        for sb, tb in self._blocks(_convnext_stages(source), _convnext_stages(target)):
            if sb is None:
                identity_block(tb.parameters(), (tb.layer_scale,), writer)
            else:
                self._block(sb, tb, writer)
        _norm(source.classifier[0], target.classifier[0], writer)
        self._layer(_classifier(source), _classifier(target), writer, mean_fill=False)

    def _block(self, sb: CNBlock, tb: CNBlock, writer: Writer) -> None:
        dw, norm, fc1, fc2 = (0, 2, 3, 5)  # positions in CNBlock.block
        self._layer(sb.block[dw], tb.block[dw], writer, mean_fill=True)
        _norm(sb.block[norm], tb.block[norm], writer)
        self._layer(sb.block[fc1], tb.block[fc1], writer, mean_fill=False)
        # The new residual channels must receive mean_c(scale_c * out_c): fold the layer scale into fc2's mean.
        scale = sb.layer_scale.flatten()
        new_scale = scale.abs().mean()
        self._layer(sb.block[fc2], tb.block[fc2], writer, mean_fill=True, weights=scale / new_scale.clamp_min(1e-30))
        canvas = Canvas(tb.layer_scale)
        canvas.put(slice(0, len(scale)), sb.layer_scale)
        canvas.put(slice(len(scale), None), new_scale)
        writer(tb.layer_scale, canvas)

    def _layer(
        self,
        src: nn.Conv2d | nn.Linear,
        tgt: nn.Conv2d | nn.Linear,
        writer: Writer,
        *,
        mean_fill: bool,
        weights: torch.Tensor | None = None,
    ) -> None:
        """Copy a conv or linear layer; old outputs ignore new inputs (zero columns).

        With ``mean_fill`` (a layer that writes the residual stream) each new
        output is the mean of the old ones, weighted by ``weights``. Otherwise
        new outputs are free (hidden units that nothing reads yet).
        """
        w, b = Canvas(tgt.weight), Canvas(tgt.bias)
        out, inp = src.weight.shape[:2]
        w.put((slice(0, out), slice(0, inp)), src.weight)
        w.put((slice(0, out), slice(inp, None)), 0.0)
        b.put(slice(0, out), src.bias)
        if mean_fill:
            rows = w.data.new_ones(out) if weights is None else weights
            w.put(slice(out, None), (w.data[:out] * rows.view(-1, *[1] * (w.data.dim() - 1))).mean(0))
            b.put(slice(out, None), (b.data[:out] * rows).mean(0))
        writer(tgt.weight, w)
        writer(tgt.bias, b)


def _norm(src: nn.LayerNorm, tgt: nn.LayerNorm, writer: Writer) -> None:
    """LayerNorm over ``[x, mean(x), ...]`` gives ``[LN(x), mean(beta), ...]`` (LEMON's rule)."""
    stream = ResidualStream(src.normalized_shape[0], tgt.normalized_shape[0], "mean")
    grow_norm(src, tgt, stream, writer, writes_residual=True)


def _pooled(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled features that the final Linear reads, computed with the model's own modules."""
    if isinstance(model, ResNet):
        x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return torch.flatten(model.avgpool(x), 1)
    if isinstance(model, ConvNeXt):
        return model.classifier[:-1](model.avgpool(model.features(images)))
    raise TypeError(f"not a torchvision ResNet or ConvNeXt: {type(model).__name__}")


def convnet_forward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Outputs:
    """Classification cross-entropy; the features are the pooled features before the final Linear."""
    images, labels = batch
    return classify(_pooled(model, images), _classifier(model), labels)


RESNET = register_family(
    Family(
        name="resnet",
        model_types=(ResNet,),
        grower=ResNetGrower,
        transferer=no_transfer,  # measured best: see comptlib.transferer.no_transfer
        forward=convnet_forward,
        evaluate=evaluate_classifier,
        sample_means=True,  # accuracy and mean loss: ranks split the held-out set
        dims=resnet_dims,
        spec=resnet_spec,
    )
)

CONVNEXT = register_family(
    Family(
        name="convnext",
        model_types=(ConvNeXt,),
        grower=ConvNeXtGrower,
        # its width grows only approximately: the paper's loss pulls the grown model back (no_transfer: 1.9 points
        # worse on the digits example, one seed)
        transferer=FeatureMSE,
        forward=convnet_forward,
        evaluate=evaluate_classifier,
        sample_means=True,  # accuracy and mean loss: ranks split the held-out set
        dims=convnext_dims,
        spec=convnext_spec,
    )
)
