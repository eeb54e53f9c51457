"""When the CPU fast paths of the ops (oneDNN linear and convolution, the dropout mask) may replace PyTorch's op.

CPU autocast is not part of it: it casts the products (the oneDNN linear and convolution check it
themselves) but not dropout."""

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode


def eager_cpu(x: torch.Tensor) -> bool:
    """``x`` is on the CPU and this call runs eagerly: not under ``torch.compile`` (Inductor picks its own
    kernels), tracing, or a ``TorchDispatchMode`` (the FLOP counter, fake tensors), all of which must see the
    standard op."""
    return (
        x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not is_in_torch_dispatch_mode()
    )
