"""DAT: Vision Transformer with Deformable Attention (Xia, Pan, Song, Li, Huang; CVPR 2022).

A four-stage pyramid (strides 4/8/16/32) of pre-norm transformer blocks. Each stage stacks blocks
given by its ``stage_spec``:

- ``L``: local window attention (Swin W-MSA),
- ``S``: shifted window attention (Swin SW-MSA, shift ``ceil(w / 2)``),
- ``D``: deformable attention (:class:`~deformvision.layers.DeformableAttention`).

Stem: 4x4 stride-4 conv + LayerNorm; between stages: 2x2 stride-2 conv + LayerNorm; head: LayerNorm,
global average pooling, linear. This is DAT v1 (the paper's models, LeapLabTHU/DAT@566a593), with
the official checkpoints loadable through :meth:`DAT.checkpoint_filter`.

Unlike the official model, ours runs at any input size (windows are padded and masked, shift masks
and position biases are computed for the size seen); see :class:`DAT`.
"""

import math
from collections.abc import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import FeatureInfo, generate_default_cfgs
from timm.models import register_model as timm_register_model
from timm.models._features import feature_take_indices
from torch import nn

from deformvision._checks import check_bool, check_int, check_ints, check_rate
from deformvision.layers import DeformableAttention, Linear, SamplingPoints, WindowAttention
from deformvision.models._dat_official import fit_dat_state_dict
from deformvision.models._registry import build_model, register_model
from deformvision.models.dat_blocks import Block, PatchEmbed, Stage

OFFSET_KERNEL_SIZES = (9, 7, 5, 3)  # depthwise kernel of the offset network, by stage


class DAT(nn.Module):
    """Deformable Attention Transformer (v1), classifier or multi-scale backbone.

    Args:
        img_size: input side the model is built for. It sizes the deformable position-bias tables
            (``2H-1`` x ``2W-1`` at stage maps ``img_size / 16`` and ``/ 32``); any input size runs.
        patch_size: stem stride.
        in_chans: input channels.
        num_classes: classes of the linear head (0: no head, ``forward`` returns pooled features).
        dims: channels per stage.
        depths: blocks per stage (``len(stage_spec[i])``).
        heads: attention heads per stage.
        groups: offset groups per stage (used by ``D`` blocks only).
        window_sizes: window side per stage (``L``/``S`` blocks).
        stage_spec: block kinds per stage, each ``'L'``, ``'S'`` or ``'D'``.
        strides: reference-grid stride ``r`` per stage (``D`` blocks).
        offset_range_factor: ``s`` per stage (``D`` blocks).
        use_pes, dwc_pes, fixed_pes, no_offs: per-stage position-encoding and offset switches of the
            paper's ablations (see :class:`~deformvision.layers.DeformableAttention`).
        mlp_ratio: hidden expansion of the MLPs.
        drop_rate: dropout in MLPs and attention outputs.
        attn_drop_rate: dropout on attention probabilities.
        drop_path_rate: stochastic depth, rising linearly from 0 to this over all blocks.
        features_only: build a backbone whose ``forward`` returns NCHW maps of ``out_indices``,
            each with its own LayerNorm, instead of logits.
        out_indices: stages returned when ``features_only`` (0..3, strides 4/8/16/32).

    Example:
        >>> model = DAT(num_classes=10)
        >>> model(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        groups: Sequence[int] = (-1, -1, 3, 6),
        window_sizes: Sequence[int] = (7, 7, 7, 7),
        stage_spec: Sequence[Sequence[str]] = (("L", "S"), ("L", "S"), ("L", "D") * 3, ("L", "D")),
        strides: Sequence[int] = (-1, -1, 1, 1),
        offset_range_factor: Sequence[float] = (-1, -1, 2, 2),
        use_pes: Sequence[bool] = (False, False, True, True),
        dwc_pes: Sequence[bool] = (False,) * 4,
        fixed_pes: Sequence[bool] = (False,) * 4,
        no_offs: Sequence[bool] = (False,) * 4,
        mlp_ratio: int = 4,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        for name, value in dict(patch_size=patch_size, in_chans=in_chans, mlp_ratio=mlp_ratio).items():
            check_int(name, value)
        check_int("num_classes", num_classes, low=0)  # 0: no head (timm's convention)
        rates = {"drop_rate": drop_rate, "attn_drop_rate": attn_drop_rate, "drop_path_rate": drop_path_rate}
        for name, rate in rates.items():
            check_rate(name, rate)
        check_bool("features_only", features_only)
        img_h, img_w = sides = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        check_ints("img_size", sides, low=8 * patch_size)  # the last stage's map (stride 8 * patch_size): >= 1 pixel
        per_stage = dict(
            dims=dims,
            depths=depths,
            heads=heads,
            groups=groups,
            window_sizes=window_sizes,
            stage_spec=stage_spec,
            strides=strides,
            offset_range_factor=offset_range_factor,
            use_pes=use_pes,
            dwc_pes=dwc_pes,
            fixed_pes=fixed_pes,
            no_offs=no_offs,
        )
        for key, value in per_stage.items():
            if len(value) != 4:
                raise ValueError(f"{key} must have one entry per stage (4), got {list(value)}")
        for i, (depth, spec) in enumerate(zip(depths, stage_spec, strict=True)):
            if len(spec) != depth or any(kind not in "LSD" for kind in spec):
                raise ValueError(f"stage_spec[{i}] must be {depth} of 'L', 'S', 'D', got {list(spec)}")
            check_int(f"dims[{i}]", dims[i])
            check_int(f"heads[{i}]", heads[i])
            if dims[i] % heads[i]:
                raise ValueError(f"heads[{i}] ({heads[i]}) must divide dims[{i}] ({dims[i]})")
            if "D" in spec and (groups[i] < 1 or heads[i] % groups[i]):
                raise ValueError(f"groups[{i}] must be >= 1 and divide heads[{i}] ({heads[i]}), got {groups[i]}")
            if {"L", "S"} & set(spec):
                check_int(f"window_sizes[{i}]", window_sizes[i])
        if features_only and (not out_indices or any(i not in range(4) for i in out_indices)):
            raise ValueError(f"out_indices must be stage indices in 0..3, got {list(out_indices)}")

        self.img_size = (img_h, img_w)
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.features_only = features_only
        self.out_indices = tuple(out_indices)

        self.stem = PatchEmbed(in_chans, dims[0], patch_size)
        num_blocks = sum(depths)
        block_rates = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        stages, block_index = [], 0
        for i in range(4):
            stride = patch_size * 2**i
            fmap_size = (img_h // stride, img_w // stride)
            blocks = []
            for kind in stage_spec[i]:
                if kind == "D":
                    attn = DeformableAttention(
                        dims[i],
                        heads[i],
                        groups[i],
                        fmap_size,
                        OFFSET_KERNEL_SIZES[i],
                        stride=strides[i],
                        offset_range_factor=offset_range_factor[i],
                        use_pe=use_pes[i],
                        dwc_pe=dwc_pes[i],
                        fixed_pe=fixed_pes[i],
                        no_offset=no_offs[i],
                        attn_drop=attn_drop_rate,
                        proj_drop=drop_rate,
                    )
                else:
                    shift = math.ceil(window_sizes[i] / 2) if kind == "S" else 0
                    attn = WindowAttention(dims[i], heads[i], window_sizes[i], shift, attn_drop_rate, drop_rate)
                blocks.append(Block(dims[i], attn, mlp_ratio, drop_rate, block_rates[block_index]))
                block_index += 1
            downsample = PatchEmbed(dims[i - 1], dims[i], 2, bias=False) if i > 0 else None
            stages.append(Stage(downsample, blocks))
        self.stages = nn.ModuleList(stages)
        self.feature_info = [dict(num_chs=dims[i], reduction=patch_size * 2**i, module=f"stages.{i}") for i in range(4)]

        if features_only:
            self.feature_info = FeatureInfo(self.feature_info, self.out_indices)
            self.feature_norms = nn.ModuleDict({str(i): nn.LayerNorm(dims[i]) for i in self.out_indices})
        else:
            self.norm = nn.LayerNorm(dims[-1])
            self.head = Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # ----------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        in_chans = self.stem.proj.in_channels
        min_side = max(self.feature_info.reduction()) if self.features_only else 32
        if x.ndim != 4 or x.shape[1] != in_chans:
            raise ValueError(f"expected input of shape (B, {in_chans}, H, W), got {tuple(x.shape)}")
        if min(x.shape[2:]) < min_side:
            raise ValueError(f"input side must be at least {min_side} pixels, got {tuple(x.shape[2:])}")

    def forward_stages(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, SamplingPoints]]:
        """Run stem and stages.

        Returns:
            The output map of every stage, channels last (``(B, H / 4 / 2^i, W / 4 / 2^i, dims[i])``,
            before any norm), and the sampling points of every deformable block keyed
            ``'stages.{i}.blocks.{j}'``.
        """
        self._check_input(x)
        x = self.stem(x)  # B, H/4, W/4, C0
        outputs, points = [], {}
        for i, stage in enumerate(self.stages):
            x, stage_points = stage(x)
            outputs.append(x)
            for j, block_points in enumerate(stage_points):
                if block_points is not None:
                    points[f"stages.{i}.blocks.{j}"] = block_points
        return outputs, points

    def sampling_points(self, x: torch.Tensor) -> dict[str, SamplingPoints]:
        """Deformed sampling positions and reference points of every ``D`` block for input ``x``.

        Keys are ``'stages.{i}.blocks.{j}'``; each value holds ``(B, G, Hk, Wk, 2)`` tensors, last dim
        (y, x) normalised so that -1/+1 are the centres of the border pixels of that stage's map.
        """
        return self.forward_stages(x)[1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage map after the final LayerNorm, channels last: ``(B, H/32, W/32, num_features)``."""
        if self.features_only:
            raise RuntimeError("forward_features is for classifiers; a features_only model's forward returns maps")
        return self.norm(self.forward_stages(x)[0][-1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling and the linear head (``pre_logits``: return the pooled features)."""
        x = x.mean(dim=(1, 2))  # B, C
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            outputs = self.forward_stages(x)[0]
            return [self.feature_norms[str(i)](outputs[i]).permute(0, 3, 1, 2) for i in self.out_indices]
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs, as timm's ``forward_intermediates``.

        Args:
            x: ``(B, in_chans, H, W)`` images.
            indices: stages to return: ``None`` all four, an int ``n`` the last ``n``, or a list of
                stage indices (negative ones count from the end).
            norm: pass each returned map through the norm that follows that stage in this model
                (the final norm after stage 3 of a classifier, the per-output norms of a backbone).
            stop_early: stop after the last stage needed (only with ``intermediates_only``).
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: return only the list of maps.

        Returns:
            The maps, ``(B, dims[i], H / 4 / 2^i, W / 4 / 2^i)`` in ``output_fmt``; unless
            ``intermediates_only``, preceded by :meth:`forward_features`' output (classifiers only).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        if not intermediates_only and self.features_only:
            raise ValueError("a features_only model has no final features: use intermediates_only=True")
        take, last = feature_take_indices(len(self.stages), indices)
        self._check_input(x)
        x = self.stem(x)  # B, H/4, W/4, C0
        intermediates = []
        stages = self.stages[: last + 1] if stop_early and intermediates_only else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)[0]  # B, H/4/2^i, W/4/2^i, dims[i]
            if i in take:
                y = self._stage_norm(i, x) if norm else x
                intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def _stage_norm(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """The norm this model applies after stage ``index`` (identity where it has none)."""
        if self.features_only:
            return self.feature_norms[str(index)](x) if str(index) in self.feature_norms else x
        return self.norm(x) if index == len(self.stages) - 1 else x

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay besides 1-d ones (timm's convention): the position tables."""
        return {name for name, _ in self.named_parameters() if name.endswith(("rpe_table", "position_bias_table"))}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations.

        Training memory then grows with one block instead of all of them, which is what makes large
        inputs (detection sizes such as 800x1216) trainable; it costs about one extra forward pass.
        """
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The linear head (timm's accessor)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a new one for ``num_classes`` classes (0: no head).

        ``global_pool`` is timm's argument; DAT pools by averaging only (``None`` or ``"avg"``).
        """
        if global_pool not in (None, "avg"):
            raise ValueError(f"DAT pools by averaging: global_pool must be None or 'avg', got {global_pool!r}")
        check_int("num_classes", num_classes, low=0)
        self.num_classes = num_classes
        self.head = Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    # ----------------------------------------------------------------------------------------------
    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Convert an official DAT v1 or our own state dict to this model's names and sizes.

        - official names (``patch_proj``, ``layer_norms``, ``attns``, ``down_projs``, ``cls_head``...)
          are renamed; the official size-dependent buffers (``attn_mask``,
          ``relative_position_index``) are dropped, ours are computed for the size seen;
        - position tables (``rpe_table``, ``relative_position_bias_table``) of another resolution or
          window are resized bicubically (as the official ``load_pretrained``);
        - a head for another number of classes, or the classifier's final norm and head loaded into
          a ``features_only`` backbone, is dropped and the model keeps its own (fresh) values; a
          backbone's per-output norms missing from a classifier checkpoint keep their fresh values.
        """
        window_blocks = {
            (i, j)
            for i, stage in enumerate(self.stages)
            for j, block in enumerate(stage.blocks)
            if isinstance(block.attn, WindowAttention)
        }
        return fit_dat_state_dict(state_dict, self.state_dict(), window_blocks, self.features_only)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ------------------------------------------------------------------------------------------------
# Registered variants: the official v1 configurations (LeapLabTHU/DAT configs/dat_{tiny,small,base}.yaml, dat_base_384),
# in our registry and in timm's. Weights: the official ImageNet-1k checkpoints (LeapLabTHU/DAT README),
# converted on loading by DAT.checkpoint_filter. Their SHA-256 digests are not pinned yet (no copy could
# be fetched where this was written): the first download's digest is recorded and checked afterwards.


def _cfg(url: str, **kwargs) -> dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj", "classifier": "head", "license": "apache-2.0",
        "paper_ids": "arXiv:2201.00520", "paper_name": "Vision Transformer with Deformable Attention",
        "origin_url": "https://github.com/LeapLabTHU/DAT", **kwargs,
    }  # fmt: skip


default_cfgs = generate_default_cfgs({
    "dat_tiny.in1k": _cfg("https://cloud.tsinghua.edu.cn/f/1367349deefc48efa650/?dl=1"),
    "dat_small.in1k": _cfg("https://cloud.tsinghua.edu.cn/f/f04b18081e3e4606adb7/?dl=1"),
    "dat_base.in1k": _cfg("https://cloud.tsinghua.edu.cn/f/a8d2a9645d454120b635/?dl=1"),
    "dat_base_384.in1k": _cfg("https://cloud.tsinghua.edu.cn/f/cf6a6b543cd64e0d8e43/?dl=1",
                              input_size=(3, 384, 384), crop_pct=1.0),
})  # fmt: skip

_DEEP_STAGE_SPEC = (("L", "S"), ("L", "S"), ("L", "D") * 9, ("L", "D"))


def _create(variant: str, pretrained: bool, defaults: dict, **kwargs) -> DAT:
    model = build_model(DAT, variant, pretrained, **{**defaults, **kwargs})
    model.pretrained_cfg["input_size"] = (model.stem.proj.in_channels, *model.img_size)  # the size built for
    return model


@timm_register_model
@register_model
def dat_tiny(pretrained: bool = False, **kwargs) -> DAT:
    """DAT-T: 28.3M parameters, 4.6 GMACs at 224, 82.0% ImageNet-1k top-1."""
    return _create("dat_tiny", pretrained, dict(dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), heads=(3, 6, 12, 24),
                   groups=(-1, -1, 3, 6), drop_path_rate=0.2), **kwargs)  # fmt: skip


@timm_register_model
@register_model
def dat_small(pretrained: bool = False, **kwargs) -> DAT:
    """DAT-S: 49.7M parameters, 9.0 GMACs at 224, 83.7% ImageNet-1k top-1."""
    return _create("dat_small", pretrained, dict(dims=(96, 192, 384, 768), depths=(2, 2, 18, 2),
                   heads=(3, 6, 12, 24), groups=(-1, -1, 3, 6), stage_spec=_DEEP_STAGE_SPEC, drop_path_rate=0.3),
                   **kwargs)  # fmt: skip


@timm_register_model
@register_model
def dat_base(pretrained: bool = False, **kwargs) -> DAT:
    """DAT-B: 87.9M parameters, 15.8 GMACs at 224, 84.0% ImageNet-1k top-1."""
    return _create("dat_base", pretrained, dict(dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2),
                   heads=(4, 8, 16, 32), groups=(-1, -1, 4, 8), stage_spec=_DEEP_STAGE_SPEC, drop_path_rate=0.5),
                   **kwargs)  # fmt: skip


@timm_register_model
@register_model
def dat_base_384(pretrained: bool = False, **kwargs) -> DAT:
    """DAT-B at 384x384 (windows 12): 88.2M parameters, 49.4 GMACs, 84.8% ImageNet-1k top-1."""
    return _create("dat_base_384", pretrained, dict(img_size=384, dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2),
                   heads=(4, 8, 16, 32), groups=(-1, -1, 4, 8), window_sizes=(12, 12, 12, 12),
                   stage_spec=_DEEP_STAGE_SPEC, drop_path_rate=0.5), **kwargs)  # fmt: skip
