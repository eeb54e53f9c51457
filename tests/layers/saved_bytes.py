"""What autograd keeps for backward, for the layer tests that check a memory saving."""

import torch


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while running ``fn``."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())
