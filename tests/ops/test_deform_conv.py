"""Tests for deformvision.ops.deform_conv.deform_conv2d."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from deformvision.ops.deform_conv import deform_conv2d

F64 = torch.float64


def _bilinear(image: list[list[float]], y: float, x: float) -> float:
    """torchvision's sampling rule, written out: 0 outside (-1, H) x (-1, W), else zero-padded corners."""
    height, width = len(image), len(image[0])
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    corners = [
        (y0, x0, (1 - ly) * (1 - lx)),
        (y0, x0 + 1, (1 - ly) * lx),
        (y0 + 1, x0, ly * (1 - lx)),
        (y0 + 1, x0 + 1, ly * lx),
    ]
    return sum(w * image[r][c] for r, c, w in corners if 0 <= r < height and 0 <= c < width)


def _naive_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask=None):
    """Per-output-pixel loops over channels and taps (float64 reference)."""
    batch, in_channels, _, _ = input.shape
    out_channels, group_channels, k_h, k_w = weight.shape
    groups = in_channels // group_channels
    offset_groups = offset.shape[1] // (2 * k_h * k_w)
    out_h, out_w = offset.shape[2:]
    image, off, wgt = input.tolist(), offset.tolist(), weight.tolist()
    msk = mask.tolist() if mask is not None else None
    out = torch.zeros(batch, out_channels, out_h, out_w, dtype=F64)
    for n in range(batch):
        for oc in range(out_channels):
            group = oc // (out_channels // groups)
            for ho in range(out_h):
                for wo in range(out_w):
                    total = 0.0 if bias is None else float(bias[oc])
                    for ci in range(group_channels):
                        c = group * group_channels + ci
                        og = c // (in_channels // offset_groups)
                        for i in range(k_h):
                            for j in range(k_w):
                                tap = og * k_h * k_w + i * k_w + j
                                dy, dx = off[n][2 * tap][ho][wo], off[n][2 * tap + 1][ho][wo]
                                y = ho * stride[0] - padding[0] + i * dilation[0] + dy
                                x = wo * stride[1] - padding[1] + j * dilation[1] + dx
                                m = 1.0 if msk is None else msk[n][tap][ho][wo]
                                total += wgt[oc][ci][i][j] * m * _bilinear(image[n][c], y, x)
                    out[n, oc, ho, wo] = total
    return out


def _out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# (input shape, weight shape, stride, padding, dilation, offset_groups)
CONV_CASES = [
    ((2, 3, 8, 9), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    ((2, 3, 9, 8), (4, 3, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 2, 10, 9), (3, 2, 3, 3), (1, 1), (2, 2), (2, 2), 2),
    ((2, 6, 9, 11), (4, 3, 3, 2), (2, 1), (1, 2), (2, 1), 3),
    ((1, 6, 7, 7), (6, 2, 1, 3), (1, 2), (0, 1), (1, 1), 2),
]


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("case", CONV_CASES)
def test_zero_offset_equals_conv2d(case, use_mask):
    input_shape, weight_shape, stride, padding, dilation, offset_groups = case
    torch.manual_seed(0)
    x = torch.randn(input_shape, dtype=F64)
    w = torch.randn(weight_shape, dtype=F64)
    b = torch.randn(weight_shape[0], dtype=F64)
    groups = input_shape[1] // weight_shape[1]
    expected = F.conv2d(x, w, b, stride, padding, dilation, groups)
    taps = weight_shape[2] * weight_shape[3]
    out_hw = expected.shape[2:]
    offset = torch.zeros(input_shape[0], 2 * offset_groups * taps, *out_hw, dtype=F64)
    mask = torch.ones(input_shape[0], offset_groups * taps, *out_hw, dtype=F64) if use_mask else None
    out = deform_conv2d(x, offset, w, b, stride, padding, dilation, mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_int_arguments_equal_pairs():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 7, 7, dtype=F64)
    w = torch.randn(2, 2, 3, 3, dtype=F64)
    offset = torch.randn(1, 18, 3, 3, dtype=F64)
    pairs = deform_conv2d(x, offset, w, stride=(2, 2), padding=(1, 1), dilation=(2, 2))
    ints = deform_conv2d(x, offset, w, stride=2, padding=1, dilation=2)
    torch.testing.assert_close(ints, pairs, rtol=0, atol=0)


@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_naive_loops(use_mask):
    torch.manual_seed(1)
    stride, padding, dilation = (1, 2), (1, 1), (1, 2)
    x = torch.randn(2, 4, 7, 6, dtype=F64)
    w = torch.randn(4, 2, 3, 2, dtype=F64)  # groups = 2
    b = torch.randn(4, dtype=F64)
    out_h = _out_size(7, 3, stride[0], padding[0], dilation[0])
    out_w = _out_size(6, 2, stride[1], padding[1], dilation[1])
    offset_groups, taps = 2, 6
    # Offsets up to +-4 pixels: many samples land partly or fully outside the image.
    offset = torch.empty(2, 2 * offset_groups * taps, out_h, out_w, dtype=F64).uniform_(-4, 4)
    mask = torch.rand(2, offset_groups * taps, out_h, out_w, dtype=F64) if use_mask else None
    expected = _naive_deform_conv2d(x, offset, w, b, stride, padding, dilation, mask)
    out = deform_conv2d(x, offset, w, b, stride, padding, dilation, mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_border_rule():
    """A 1x1 identity kernel reads single samples; check them against torchvision's rule by hand."""
    x = torch.arange(1.0, 13.0, dtype=F64).view(1, 1, 3, 4)  # H=3, W=4, pixel (r, c) = 4r + c + 1
    w = torch.ones(1, 1, 1, 1, dtype=F64)
    # (dy, dx) applied at output pixel (0, 0), and the expected sample.
    cases = [
        ((0.0, 0.0), 1.0),
        ((-0.25, 0.0), 0.75 * 1.0),  # between the zero row -1 and row 0
        ((-1.0, 0.0), 0.0),  # y <= -1 reads 0
        ((-1.5, 0.0), 0.0),
        ((2.5, 0.0), 0.5 * 9.0),  # between row 2 (last) and the zero row 3
        ((3.0, 0.0), 0.0),  # y >= H reads 0
        ((0.0, 3.5), 0.5 * 4.0),
        ((0.0, -0.5), 0.5 * 1.0),
        ((1.5, 2.5), 0.25 * (7.0 + 8.0 + 11.0 + 12.0)),
        ((2.5, 3.5), 0.25 * 12.0),  # only the top-left corner is inside
    ]
    for (dy, dx), expected in cases:
        offset = torch.zeros(1, 2, 3, 4, dtype=F64)
        offset[0, 0, 0, 0], offset[0, 1, 0, 0] = dy, dx
        out = deform_conv2d(x, offset, w)
        assert out[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-15), (dy, dx)


@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (-2, 1)])
def test_integer_offset_is_translation(shift):
    """Offset (dy, dx) on every tap equals the plain conv output shifted by (dy, dx), away from borders."""
    dy, dx = shift
    torch.manual_seed(2)
    x = torch.randn(2, 3, 10, 9, dtype=F64)
    w = torch.randn(4, 3, 3, 3, dtype=F64)
    b = torch.randn(4, dtype=F64)
    reference = F.conv2d(x, w, b)  # (2, 4, 8, 7)
    out_h, out_w = reference.shape[2:]
    offset = torch.empty(2, 9, 2, out_h, out_w, dtype=F64)  # (N, taps, (dy, dx), H_out, W_out)
    offset[:, :, 0], offset[:, :, 1] = dy, dx
    out = deform_conv2d(x, offset.view(2, 18, out_h, out_w), w, b)
    rows = slice(max(0, -dy), out_h - max(0, dy))
    cols = slice(max(0, -dx), out_w - max(0, dx))
    shifted_rows = slice(rows.start + dy, rows.stop + dy)
    shifted_cols = slice(cols.start + dx, cols.stop + dx)
    torch.testing.assert_close(out[:, :, rows, cols], reference[:, :, shifted_rows, shifted_cols], rtol=0, atol=1e-12)


def _away_from_integers(shape, generator):
    """Offsets whose fractional part is in [0.1, 0.9]: sample locations stay off the bilinear kinks."""
    whole = torch.randint(-2, 3, shape, generator=generator).to(F64)
    return whole + 0.1 + 0.8 * torch.rand(shape, generator=generator, dtype=F64)


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("weight_shape,offset_groups", [((3, 4, 2, 2), 2), ((4, 2, 2, 3), 1)], ids=["og2", "groups2"])
def test_gradcheck(weight_shape, offset_groups, use_mask):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 3, 4, dtype=F64, generator=generator)
    w = torch.randn(weight_shape, dtype=F64, generator=generator)
    b = torch.randn(weight_shape[0], dtype=F64, generator=generator)
    k_h, k_w = weight_shape[2:]
    padding = (1, 1)
    out_h, out_w = _out_size(3, k_h, 1, 1, 1), _out_size(4, k_w, 1, 1, 1)
    offset = _away_from_integers((1, 2 * offset_groups * k_h * k_w, out_h, out_w), generator)
    tensors = [x, offset, w, b]
    if use_mask:
        tensors.append(torch.rand(1, offset_groups * k_h * k_w, out_h, out_w, dtype=F64, generator=generator))
    tensors = [t.requires_grad_() for t in tensors]

    def fn(x, offset, w, b, mask=None):
        return deform_conv2d(x, offset, w, b, stride=1, padding=padding, dilation=1, mask=mask)

    assert torch.autograd.gradcheck(fn, tensors)


def test_float32_gradients_match_float64():
    generator = torch.Generator().manual_seed(4)
    tensors64 = [
        torch.randn(2, 4, 6, 6, dtype=F64, generator=generator),
        _away_from_integers((2, 2 * 2 * 9, 3, 3), generator),
        torch.rand(2, 2 * 9, 3, 3, dtype=F64, generator=generator),
        torch.randn(6, 2, 3, 3, dtype=F64, generator=generator),
        torch.randn(6, dtype=F64, generator=generator),
    ]
    grad_out = torch.randn(2, 6, 3, 3, dtype=F64, generator=generator)
    results = {}
    for dtype in (torch.float32, F64):
        x, offset, mask, w, b = [t.to(dtype).requires_grad_() for t in tensors64]
        out = deform_conv2d(x, offset, w, b, stride=2, padding=1, mask=mask)
        out.backward(grad_out.to(dtype))
        results[dtype] = [out] + [t.grad for t in (x, offset, mask, w, b)]
    for value32, value64 in zip(results[torch.float32], results[F64], strict=True):
        assert value32.dtype == torch.float32
        torch.testing.assert_close(value32.double(), value64, rtol=1e-4, atol=1e-4)


def test_empty_batch():
    x = torch.randn(0, 2, 5, 5)
    out = deform_conv2d(x, torch.zeros(0, 18, 3, 3), torch.randn(4, 2, 3, 3), torch.randn(4))
    assert out.shape == (0, 4, 3, 3)


def _valid_arguments():
    """Arguments that pass validation: C_in=4, groups=2, offset_groups=2, 3x3 kernel, 6x5 -> 4x3."""
    return {
        "input": torch.randn(2, 4, 6, 5),
        "offset": torch.zeros(2, 36, 4, 3),
        "weight": torch.randn(6, 2, 3, 3),
        "bias": torch.zeros(6),
        "mask": torch.ones(2, 18, 4, 3),
    }


INVALID_CASES = [
    ("input_rank", {"input": torch.randn(4, 6, 5)}, r"input must be a 4-D tensor"),
    ("offset_rank", {"offset": torch.zeros(36, 4, 3)}, r"offset must be a 4-D tensor"),
    ("weight_rank", {"weight": torch.randn(6, 2, 9)}, r"weight must be a 4-D tensor"),
    ("mask_rank", {"mask": torch.ones(2, 18, 12)}, r"mask must be a 4-D tensor"),
    ("input_dtype", {"input": torch.ones(2, 4, 6, 5, dtype=torch.int64)}, r"must be a floating-point"),
    ("offset_dtype", {"offset": torch.zeros(2, 36, 4, 3, dtype=F64)}, r"offset dtype .* does not match"),
    ("offset_device", {"offset": torch.zeros(2, 36, 4, 3, device="meta")}, r"offset device .* does not"),
    ("bias_dtype", {"bias": torch.zeros(6, dtype=F64)}, r"bias .* does not match input"),
    ("bias_shape", {"bias": torch.zeros(5)}, r"bias must have shape \(6,\)"),
    ("stride", {"stride": 0}, r"stride must be an int or a pair of ints >= 1, got 0"),
    ("stride_pair", {"stride": (1, 2, 3)}, r"stride must be an int or a pair"),
    ("in_groups", {"weight": torch.randn(6, 3, 3, 3)}, r"input channels \(4\) must be divisible by weight"),
    ("out_groups", {"weight": torch.randn(5, 2, 3, 3), "bias": None}, r"weight.shape\[0\] \(5\) must be"),
    ("offset_channels", {"offset": torch.zeros(2, 30, 4, 3)}, r"offset.shape\[1\] \(30\) must be a positive"),
    (
        "offset_groups",
        {"offset": torch.zeros(2, 54, 4, 3), "mask": None},
        r"input channels \(4\) must be divisible by the offset groups \(3\)",
    ),
    ("too_small", {"input": torch.randn(2, 4, 2, 5)}, r"computed output size \(0, 3\) is too small"),
    ("offset_size", {"offset": torch.zeros(2, 36, 3, 3)}, r"offset must have shape \(2, 36, 4, 3\)"),
    ("offset_batch", {"offset": torch.zeros(1, 36, 4, 3)}, r"offset must have shape \(2, 36, 4, 3\)"),
    ("mask_channels", {"mask": torch.ones(2, 9, 4, 3)}, r"mask must have shape \(2, offset_groups"),
    ("mask_size", {"mask": torch.ones(2, 18, 4, 4)}, r"mask must have shape .* got \(2, 18, 4, 4\)"),
]


@pytest.mark.parametrize("changes,message", [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES])
def test_invalid_arguments(changes, message):
    arguments = _valid_arguments()
    deform_conv2d(**arguments)  # the unmodified arguments are valid
    arguments.update(changes)
    with pytest.raises(ValueError, match=message):
        deform_conv2d(**arguments)


NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_GPU)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_torchvision(device, use_mask):
    generator = torch.Generator().manual_seed(5)
    stride, padding, dilation = (2, 1), (1, 2), (1, 2)
    out_h, out_w = _out_size(9, 3, 2, 1, 1), _out_size(10, 2, 1, 2, 2)
    tensors = [
        torch.randn(3, 6, 9, 10, dtype=F64, generator=generator),  # input
        3 * torch.randn(3, 2 * 3 * 6, out_h, out_w, dtype=F64, generator=generator),  # offset, og = 3
        torch.randn(4, 3, 3, 2, dtype=F64, generator=generator),  # weight, groups = 2
        torch.randn(4, dtype=F64, generator=generator),  # bias
        torch.rand(3, 3 * 6, out_h, out_w, dtype=F64, generator=generator),  # mask
    ]
    grad_out = torch.randn(3, 4, out_h, out_w, dtype=F64, generator=generator).to(device)
    results = []
    for op in (deform_conv2d, torchvision.ops.deform_conv2d):
        x, offset, w, b, mask = [t.to(device).requires_grad_() for t in tensors]
        out = op(x, offset, w, b, stride, padding, dilation, mask if use_mask else None)
        out.backward(grad_out)
        grads = [t.grad for t in (x, offset, w, b)] + ([mask.grad] if use_mask else [])
        results.append([out, *grads])
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("use_mask", [False, True])
def test_registered_op_passes_opcheck(use_mask):
    """Schema, fake (meta) kernel, autograd registration and AOT dispatch of torch.ops.deformvision.deform_conv2d."""
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(1, 4, 5, 6, dtype=F64, generator=generator)
    offset = torch.randn(1, 2 * 2 * 6, 4, 5, dtype=F64, generator=generator)  # 3x2 kernel, offset_groups = 2
    w = torch.randn(4, 2, 3, 2, dtype=F64, generator=generator)  # groups = 2
    b = torch.randn(4, dtype=F64, generator=generator)
    mask = torch.rand(1, 2 * 6, 4, 5, dtype=F64, generator=generator) if use_mask else None
    tensors = [t.requires_grad_() if t is not None else None for t in (x, offset, w, b, mask)]
    torch.library.opcheck(torch.ops.deformvision.deform_conv2d.default, (*tensors, 1, 1, 1, 1, 1, 1))


def test_gradients_of_a_subset():
    """Only the requested gradients are computed, and they equal those of the full backward pass."""
    generator = torch.Generator().manual_seed(7)
    tensors = [
        torch.randn(2, 4, 6, 6, dtype=F64, generator=generator),
        torch.randn(2, 2 * 2 * 9, 6, 6, dtype=F64, generator=generator),
        torch.randn(6, 2, 3, 3, dtype=F64, generator=generator),
        torch.randn(6, dtype=F64, generator=generator),
        torch.rand(2, 2 * 9, 6, 6, dtype=F64, generator=generator),
    ]

    def grads(requires):
        leaves = [t.clone().requires_grad_(r) for t, r in zip(tensors, requires, strict=True)]
        x, offset, w, b, mask = leaves
        deform_conv2d(x, offset, w, b, padding=1, mask=mask).square().sum().backward()
        return [t.grad for t in leaves]

    full = grads([True] * 5)
    for requires in (
        [True, False, False, False, False],
        [False, True, False, False, True],
        [False, False, True, True, False],
    ):
        for got, expected, r in zip(grads(requires), full, requires, strict=True):
            if r:
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
            else:
                assert got is None


def test_non_contiguous_arguments():
    """channels_last input/offset/mask and a transposed weight give the results of contiguous ones."""
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(2, 4, 6, 5, dtype=F64, generator=generator)
    offset = torch.randn(2, 2 * 2 * 9, 6, 5, dtype=F64, generator=generator)
    w = torch.randn(2, 6, 3, 3, dtype=F64, generator=generator).transpose(0, 1)  # (6, 2, 3, 3), groups = 2
    b = torch.randn(6, dtype=F64, generator=generator)
    mask = torch.rand(2, 2 * 9, 6, 5, dtype=F64, generator=generator)
    grad_out = torch.randn(2, 6, 6, 5, dtype=F64, generator=generator)
    results = []
    for layout in (torch.channels_last, torch.contiguous_format):
        leaves = [t.contiguous(memory_format=layout).requires_grad_() for t in (x, offset, mask)]
        weight = (w if layout == torch.channels_last else w.contiguous()).detach().requires_grad_()
        out = deform_conv2d(leaves[0], leaves[1], weight, b, padding=1, mask=leaves[2])
        out.backward(grad_out)
        results.append([out, weight.grad, *[t.grad for t in leaves]])
    for strided, contiguous in zip(*results, strict=True):
        torch.testing.assert_close(strided, contiguous, rtol=1e-12, atol=1e-12)
