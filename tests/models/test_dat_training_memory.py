"""DAT's training forward keeps less for backward (GELU recomputed in the MLP) without changing gradients."""

import torch

from deformvision.layers import DeformableAttention
from deformvision.models import dat_blocks
from deformvision.models.dat import DAT
from deformvision.models.dat_blocks import Block


def _tiny_dat() -> DAT:
    torch.manual_seed(0)
    return DAT(
        img_size=64,
        dims=[16, 32, 64, 64],
        depths=[1, 1, 2, 1],
        heads=[1, 2, 4, 4],
        groups=[1, 1, 2, 2],
        stage_spec=[["L"], ["S"], ["L", "D"], ["D"]],
        window_sizes=[4, 2, 2, 2],
    ).double()


def _gradients(model: DAT, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_gradients_equal_those_of_the_plain_mlp(monkeypatch):
    model = _tiny_dat().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    fused = _gradients(model, x)
    monkeypatch.setattr(Block, "_mlp", lambda self, x: self.mlp(x))  # plain autograd through timm's Mlp
    plain = _gradients(model, x)
    assert len(fused) == len(plain)
    for g, g_ref in zip(fused, plain, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_mlp_dropout_takes_the_plain_path():
    torch.manual_seed(0)
    block = Block(8, torch.nn.Identity(), mlp_ratio=4, drop=0.5, drop_path=0.0).train()
    x = torch.randn(1, 2, 2, 8)
    torch.manual_seed(1)
    y = block.mlp(x)
    torch.manual_seed(1)
    torch.testing.assert_close(block._mlp(x), y)  # same dropout draws: the module itself ran


def _set_fused_attn(model: DAT, flag: bool) -> None:
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = flag


def test_gradients_equal_those_of_the_explicit_attention(monkeypatch):
    """The training path (attention probabilities, qkv, the deformable bias and the offset network recomputed in
    backward) against autograd through the plain ops (the explicit softmax, ``fused_attn = False``, and the
    ``conv_offset`` modules), in float64."""
    model = _tiny_dat().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    recomputed = _gradients(model, x)
    _set_fused_attn(model, False)
    plain_offsets = lambda self, q: self.conv_offset(q.reshape(q.shape[0] * self.num_groups, -1, *q.shape[2:]))  # noqa: E731
    monkeypatch.setattr(DeformableAttention, "_offsets", plain_offsets)
    explicit = _gradients(model, x)
    assert len(recomputed) == len(explicit)
    for g, g_ref in zip(recomputed, explicit, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_gradients_equal_those_with_the_normalised_tensors_kept(monkeypatch):
    model = _tiny_dat().train()
    with torch.no_grad():  # norms that are not the identity, so that a wrong recomputation shows
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1, 0.3)
                module.bias.normal_(0, 0.3)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    recomputed = _gradients(model, x)
    monkeypatch.setattr(dat_blocks, "apply_to_layer_norm", lambda norm, x, consumer: consumer(norm(x)))
    kept = _gradients(model, x)
    for g, g_ref in zip(recomputed, kept, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_grad_checkpointing_gives_the_same_gradients():
    model = _tiny_dat().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    plain = _gradients(model, x)
    model.set_grad_checkpointing(True)
    for g, g_ref in zip(_gradients(model, x), plain, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
