"""Device names: the allowed spellings, and devices this machine does not have, refused with a clear error."""

import pytest
import torch

from deformvision.engine.distributed import resolve_device


def test_cpu_and_auto_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "", "tpu"])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(ValueError, match=rf"device must be auto, cpu, cuda, cuda:N or mps, got '{name}'"):
        resolve_device(name)


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="device 'cuda:0' requested but CUDA is not available"):
        resolve_device("cuda:0")


def test_a_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    """Two GPUs: cuda:2, or plain cuda for local rank 3, do not exist (refused before torch.cuda.set_device)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    selected = []
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    with pytest.raises(RuntimeError, match=r"device 'cuda:2' .* this machine has 2 CUDA device\(s\): cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(RuntimeError, match=r"device 'cuda' \(local rank 3\) resolves to cuda:3 but this machine has 2"):
        resolve_device("cuda", local_rank=3)
    assert not selected
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1) and selected == [torch.device("cuda", 1)]


def test_mps_where_there_is_none_is_refused(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="device 'mps' requested but MPS is not available"):
        resolve_device("mps")
