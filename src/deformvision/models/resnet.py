"""ResNet-50 / ResNet-101 backbones and classifiers: a thin wrapper around torchvision's ResNet.

torchvision provides the network: :func:`torchvision.models.resnet50` / :func:`~torchvision.models.resnet101`
build the layers (the "v1.5" bottleneck, stride in the 3x3 conv; ``replace_stride_with_dilation`` for
the dilated "DC5" ``layer4``) and their initialisation, and :class:`torchvision.ops.misc.FrozenBatchNorm2d`
is the frozen norm of the detection backbone (eps 1e-5, as the official Deformable DETR's). This module
adopts those modules under torchvision's names (``conv1``, ``bn1``, ``layer{1-4}``, ``fc``), so torchvision
ImageNet checkpoints and the backbone of an official Deformable DETR checkpoint (``backbone.0.body.*``)
load through :meth:`ResNet.checkpoint_filter`, and adds what deformvision and timm expect of a backbone:
our registry, ``features_only`` / ``out_indices``, frozen stages, timm's ``feature_info`` and
``forward_intermediates`` contract, and gradient checkpointing.

Stage indices here are ``0..3`` = ``layer1 .. layer4`` (strides 4/8/16/32). timm's own ``resnet50``
counts the stem as index 0, so its ``layer1`` is index 1 there.
"""

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import FeatureInfo, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops.misc import FrozenBatchNorm2d

from deformvision._checks import check_bool, check_int
from deformvision.models._registry import build_model, register_model
from deformvision.ops._eager_cpu import eager_cpu

logger = logging.getLogger(__name__)

NormLayer = Callable[[int], nn.Module]

_BUILDERS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}
_STAGES = ("layer1", "layer2", "layer3", "layer4")


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))``; a :class:`FrozenBatchNorm2d` is folded into the convolution (its per-channel scale
    into the weights, its shift into the bias), which spares the two passes over the output that the norm
    costs: the same values to float rounding (about 2e-6 relative), gradients to ``conv``'s parameters
    through the fold. The forward hooks of ``conv`` and ``norm`` do not run on the folded path.

    A channels-last float32 CPU input (the frozen backbone's, see :meth:`ResNet._run_stages`) goes to oneDNN's
    convolution directly: PyTorch's own choice for a 1x1 convolution on one thread, its reference kernel, is
    slower (about 15% on the whole ResNet-50 at 512x683)."""
    if not isinstance(norm, FrozenBatchNorm2d):
        return norm(conv(x))
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # C_out, torchvision's formula
    shift = norm.bias - norm.running_mean * scale  # C_out
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = conv.weight * scale[:, None, None, None]  # C_out, C_in / groups, kH, kW
    if _channels_last_cpu(x):
        return torch.mkldnn_convolution(x, weight, shift, conv.padding, conv.stride, conv.dilation, conv.groups)
    return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)


def _onednn_cpu(x: torch.Tensor) -> bool:
    """A 4-d float32 CPU tensor outside compilation, autocast and dispatch modes (the FLOP counter), on a
    PyTorch with oneDNN: oneDNN's convolution may run it, in channels-last layout."""
    return (
        x.dtype == torch.float32
        and x.dim() == 4
        and torch.backends.mkldnn.is_available()
        and eager_cpu(x)
        and not torch.is_autocast_enabled("cpu")  # autocast casts the convolution: F.conv2d must see it
    )


def _channels_last_cpu(x: torch.Tensor) -> bool:
    """:func:`_onednn_cpu` and already channels-last: oneDNN's convolution runs it without a layout change."""
    return _onednn_cpu(x) and x.is_contiguous(memory_format=torch.channels_last)


def _in_layout_of(images: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A returned map in the memory format of the input ``images``, as torchvision's ResNet returns them: packed
    NCHW for NCHW images (a copy from the channels-last layout the frozen CPU path computes in), else as is."""
    return out.contiguous() if images.is_contiguous() else out


def bottleneck(block: torchvision.models.resnet.Bottleneck, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``Bottleneck.forward`` with every conv + norm pair through :func:`conv_norm`."""
    out = F.relu_(conv_norm(block.conv1, block.bn1, x))
    out = F.relu_(conv_norm(block.conv2, block.bn2, out))
    out = conv_norm(block.conv3, block.bn3, out)
    identity = x if block.downsample is None else conv_norm(block.downsample[0], block.downsample[1], x)
    return F.relu_(out.add_(identity))


class ResNet(nn.Module):
    """torchvision ResNet-50/101 as a classifier or a multi-scale backbone, with timm's model contract.

    Args:
        arch: ``"resnet50"`` or ``"resnet101"``: the torchvision builder that makes the layers.
        in_chans: input channels (another count than 3 replaces torchvision's ``conv1`` by a fresh one).
        num_classes: classes of the linear head ``fc`` (0: no head, ``forward`` returns pooled features).
        norm_layer: norm constructor taking the channel count; default torchvision's
            :class:`~torchvision.ops.misc.FrozenBatchNorm2d` for ``features_only`` (the detection
            setting: statistics and affine are buffers, nothing is trained), :class:`torch.nn.BatchNorm2d`
            otherwise.
        frozen_stages: the stem and stages ``layer1`` .. ``layer{frozen_stages}`` get
            ``requires_grad=False`` and stay in eval mode (-1: nothing frozen, 0: the stem only);
            default 1 (stem + ``layer1``, as the official Deformable DETR) for ``features_only``,
            -1 otherwise.
        dilation: replace the stride of ``layer4`` by dilation (``replace_stride_with_dilation=[False,
            False, True]``, the "DC5" backbone: C5 at stride 16).
        features_only: build a backbone whose ``forward`` returns the maps of ``out_indices`` instead of logits
            (in the input's memory format: packed NCHW for NCHW images); stages after the last returned one are
            not kept, nor is ``fc``.
        out_indices: stages returned when ``features_only``: 0..3 = ``layer1`` .. ``layer4`` (strides
            4/8/16/32, channels 256/512/1024/2048); default C3-C5 as Deformable DETR.

    Attributes:
        feature_info: timm's convention. A classifier has a list of one dict per stage,
            ``dict(num_chs=256, reduction=4, module='layer1')`` ...; a ``features_only`` model a
            :class:`timm.models.FeatureInfo` of those dicts and ``out_indices``, whose ``channels()``,
            ``reduction()`` and ``module_name()`` describe the returned maps, in order.

    Example:
        >>> backbone = resnet50(features_only=True)
        >>> [tuple(f.shape) for f in backbone(torch.randn(1, 3, 64, 96))]
        [(1, 512, 8, 12), (1, 1024, 4, 6), (1, 2048, 2, 3)]
        >>> backbone.feature_info.channels(), backbone.feature_info.reduction()
        ([512, 1024, 2048], [8, 16, 32])
    """

    def __init__(
        self,
        arch: str = "resnet50",
        in_chans: int = 3,
        num_classes: int = 1000,
        norm_layer: NormLayer | None = None,
        frozen_stages: int | None = None,
        dilation: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] = (1, 2, 3),
    ) -> None:
        super().__init__()
        if arch not in _BUILDERS:
            raise ValueError(f"arch must be one of {sorted(_BUILDERS)}, got {arch!r}")
        check_int("in_chans", in_chans)
        check_int("num_classes", num_classes, low=0)  # 0: no head (timm's convention)
        check_bool("dilation", dilation)
        check_bool("features_only", features_only)
        distinct_stages = len(set(out_indices)) == len(out_indices) > 0 and all(i in range(4) for i in out_indices)
        if features_only and not distinct_stages:
            raise ValueError(f"out_indices must be distinct stage indices in 0..3, got {list(out_indices)}")
        if norm_layer is None:
            norm_layer = FrozenBatchNorm2d if features_only else nn.BatchNorm2d
        if frozen_stages is None:
            frozen_stages = 1 if features_only else -1
        if frozen_stages not in range(-1, 5):
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        self.num_classes = num_classes
        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.num_stages = max(self.out_indices) + 1 if features_only else 4
        self.grad_checkpointing = False

        net = _BUILDERS[arch](
            weights=None,
            num_classes=num_classes if num_classes > 0 else 1000,
            norm_layer=norm_layer,
            replace_stride_with_dilation=[False, False, dilation],
        )
        self.num_features = net.fc.in_features
        if in_chans != 3:  # torchvision's stem is for RGB; a fresh conv initialised as torchvision's
            net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        for name in _STAGES[: self.num_stages]:
            self.add_module(name, getattr(net, name))

        feature_info, reduction = [], 4
        for i, name in enumerate(_STAGES):
            stage_stride = 1 if i == 0 or (dilation and i == 3) else 2
            reduction *= stage_stride
            feature_info.append(dict(num_chs=256 * 2**i, reduction=reduction, module=name))
        if features_only:
            self.feature_info = FeatureInfo(feature_info, self.out_indices)
        else:
            self.feature_info = feature_info
            self.avgpool = net.avgpool
            self.fc = net.fc if num_classes > 0 else nn.Identity()
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train()  # puts the frozen modules in eval mode

    def _stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in _STAGES[: self.num_stages]]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1, *self._stages()[: self.frozen_stages]]

    def train(self, mode: bool = True) -> "ResNet":
        """Set train/eval mode; frozen stages always stay in eval mode (their BatchNorm statistics fixed)."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each bottleneck block in the backward pass instead of storing its activations.

        Uses :func:`torch.utils.checkpoint.checkpoint` (non-reentrant) per block while gradients are
        enabled (as timm does); the gradients are unchanged. Training BatchNorm (not the frozen ones) sees its stage
        twice, so its running statistics are updated twice per step, as with any checkpointed BatchNorm.
        """
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names of parameters to exclude from weight decay: none for a ResNet (timm's contract)."""
        return set()

    # ----------------------------------------------------------------------------------------------
    def _run_stages(self, x: torch.Tensor, num_stages: int) -> list[torch.Tensor]:
        """Stem and the first ``num_stages`` stages; the output of each, ``(B, C_i, H / s_i, W / s_i)``.

        Sizes round up at every stride-2 layer: the map of stride ``s`` is ``ceil(H / s)`` high. The maps are in
        the layout they were computed in (channels-last on the frozen float32 CPU path): the public methods give
        the ones they return the input's layout (:func:`_in_layout_of`), so a map nobody asked for is never copied.
        """
        if x.ndim != 4 or x.shape[1] != self.conv1.in_channels:
            raise ValueError(f"expected input of shape (B, {self.conv1.in_channels}, H, W), got {tuple(x.shape)}")
        frozen_norms = isinstance(self.bn1, FrozenBatchNorm2d)
        if frozen_norms and _onednn_cpu(x):
            x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's layout (conv_norm)
        x = self.maxpool(self.relu(conv_norm(self.conv1, self.bn1, x)))  # B, 64, H/4, W/4
        outputs = []
        for stage in self._stages()[:num_stages]:
            for block in stage:
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(bottleneck, block, x, use_reentrant=False)
                else:
                    x = bottleneck(block, x)
            outputs.append(x)
        return outputs

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs, with timm's semantics (:func:`timm.models._features.feature_take_indices`).

        Args:
            x: ``(B, in_chans, H, W)`` images.
            indices: stages to return (0..3 = ``layer1`` .. ``layer4``): None: all, an int ``n``: the
                last ``n``, a sequence: those (negative ones count from the end); returned in stage order.
                An index out of range fails timm's assertion (AssertionError).
            norm: no effect (a ResNet has no final norm); accepted for timm's contract.
            stop_early: run no stage after the last one returned.
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list of maps.

        Returns:
            The NCHW maps, or ``(final, maps)`` where ``final`` is the output of the last stage run
            (``layer4`` unless ``stop_early`` or a ``features_only`` model that does not build it).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(4, indices)
        if max_index >= self.num_stages:
            raise ValueError(f"stage {max_index} is not built (this model has {self.num_stages} stages)")
        outputs = self._run_stages(x, max_index + 1 if stop_early else self.num_stages)
        intermediates = [_in_layout_of(x, out) for i, out in enumerate(outputs) if i in take_indices]
        return intermediates if intermediates_only else (_in_layout_of(x, outputs[-1]), intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (timm's semantics), and the head if ``prune_head``.

        A model that no longer ends in ``layer4`` loses its head too (it was sized for ``layer4``);
        ``num_features`` becomes the channels of the last kept stage. Returns the absolute indices kept.
        """
        take_indices, max_index = feature_take_indices(4, indices)
        if self.features_only and max(self.out_indices) > max_index:
            raise ValueError(f"cannot prune stages this features_only model returns (out_indices {self.out_indices})")
        for name in _STAGES[max_index + 1 : self.num_stages]:
            delattr(self, name)
        prune_end = max_index + 1 < self.num_stages
        self.num_stages = min(self.num_stages, max_index + 1)
        if not self.features_only:
            if prune_end:
                self.num_features = self.feature_info[max_index]["num_chs"]
            if prune_head or prune_end:
                self.reset_classifier(0)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map: ``(B, 2048, H/32, W/32)`` (``H/16`` with ``dilation``)."""
        if self.features_only:
            raise RuntimeError("forward_features is for classifiers; a features_only model's forward returns maps")
        return _in_layout_of(x, self._run_stages(x, self.num_stages)[-1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """torchvision's global average pooling and ``fc``: ``(B, 2048, h, w)`` -> ``(B, num_classes)``.

        With ``pre_logits`` the pooled features ``(B, 2048)`` are returned.
        """
        x = self.avgpool(x).flatten(1)  # B, C, 1, 1 -> B, C
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, num_classes)``, or with ``features_only`` the maps of ``out_indices`` (NCHW, in that order)."""
        if self.features_only:
            outputs = self._run_stages(x, self.num_stages)
            return [_in_layout_of(x, outputs[i]) for i in self.out_indices]
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The classifier head ``fc`` (``nn.Identity`` when there is none)."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a new one for ``num_classes`` classes (0: no head)."""
        check_int("num_classes", num_classes, low=0)
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # ----------------------------------------------------------------------------------------------
    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Convert a torchvision ResNet or an official Deformable DETR state dict to this model.

        - Deformable DETR (``backbone.0.body.*`` keys present): only the backbone is kept, prefix removed;
        - ``num_batches_tracked`` of BatchNorm checkpoints is dropped when this model has none
          (:class:`~torchvision.ops.misc.FrozenBatchNorm2d`, whose ``load_state_dict`` would ignore it;
          dropping it here also lets the strict key check pass); a BatchNorm model loading a checkpoint
          without it (frozen norms) keeps its own counters;
        - ``fc`` is dropped by a model without head (``features_only`` or ``num_classes=0``), and so
          are the stages a ``features_only`` model does not build; a head of another size, or one
          missing from the checkpoint, is replaced by the model's own (fresh) ``fc`` with a warning.
        """
        prefix = "backbone.0.body."
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        own = self.state_dict()
        unbuilt = tuple(f"{name}." for name in _STAGES[self.num_stages :])
        converted = {
            key: value
            for key, value in state_dict.items()
            if key in own or not (key.endswith(".num_batches_tracked") or key.startswith(("fc.", *unbuilt)))
        }
        for key, value in own.items():
            if key.endswith(".num_batches_tracked") and key not in converted:
                converted[key] = value
        for key in ("fc.weight", "fc.bias"):
            if key in own and (key not in converted or converted[key].shape != own[key].shape):
                shape = tuple(converted[key].shape) if key in converted else "missing"
                logger.warning("checkpoint head %s (%s) does not fit this model: keeping the model's own", key, shape)
                converted[key] = own[key]
        return converted


# ------------------------------------------------------------------------------------------------
# Registered variants (torchvision's resnet50 / resnet101; 1000-class heads by default). Registered in
# deformvision's registry only: timm has its own resnet50. Pretrained weights: torchvision's ImageNet-1k
# files ("tv_in1k", the IMAGENET1K_V1 weights the official Deformable DETR starts from), located through
# torchvision's weight enums; their names carry only a digest prefix, so the first download's SHA-256 is
# recorded and checked afterwards.


def _tv_cfg(weights: torchvision.models.WeightsEnum) -> dict:
    return {
        "url": weights.url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "bsd-3-clause",
        "origin_url": "https://github.com/pytorch/vision",
    }


default_cfgs = generate_default_cfgs(
    {
        "resnet50.tv_in1k": _tv_cfg(torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
        "resnet101.tv_in1k": _tv_cfg(torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
    }
)


@register_model
def resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-50: 25.6M parameters (23.5M without ``fc``), 4.1 GMACs at 224."""
    return build_model(ResNet, "resnet50", pretrained, **{"arch": "resnet50", **kwargs})


@register_model
def resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-101: 44.5M parameters (42.5M without ``fc``), 7.8 GMACs at 224."""
    return build_model(ResNet, "resnet101", pretrained, **{"arch": "resnet101", **kwargs})
