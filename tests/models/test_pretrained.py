"""Pretrained weights by name, offline: a local official checkpoint served through a ``file://`` URL.

The whole path runs as for a published file: download -> SHA-256 check -> cache -> convert from the
official layout -> strict load; the logits must equal the official implementation's (golden tensors).
"""

import hashlib
import json
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import deformvision as dv
from deformvision.models._pretrained import split_url

FIXTURE = Path(__file__).parent.parent / "fixtures" / "dat" / "tiny64"


def tiny64_kwargs() -> dict:
    """Our ``DAT`` arguments for the official constructor call of the tiny64 fixture."""
    official = json.loads((FIXTURE / "config.json").read_text())["dat_kwargs"]
    names = [
        "img_size",
        "patch_size",
        "num_classes",
        "dims",
        "depths",
        "heads",
        "groups",
        "window_sizes",
        "stage_spec",
        "strides",
        "offset_range_factor",
        "use_pes",
        "dwc_pes",
        "fixed_pes",
        "no_offs",
    ]
    return {"mlp_ratio": official["expansion"], "drop_path_rate": 0.0, **{k: official[k] for k in names}}


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory) -> tuple[Path, str]:
    """The fixture's official state dict saved as the official code saves it (``{'model': ...}`` in a .pth)."""
    path = tmp_path_factory.mktemp("published") / "dat_tiny64_official.pth"
    torch.save({"model": load_file(FIXTURE / "weights.safetensors")}, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def golden_logits(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    golden = load_file(FIXTURE / "golden.safetensors")
    with torch.no_grad():
        return model.eval()(golden["input"]), golden["logits"]


@pytest.mark.parametrize("create", [dv.create_model, timm.create_model], ids=["deformvision", "timm"])
def test_download_hash_cache_convert_same_outputs(official_pth, tmp_path, create):
    source, sha = official_pth
    cache = tmp_path / "cache"
    url = f"{source.as_uri()}#sha256={sha}"
    model = create("dat_tiny", pretrained=True, pretrained_cfg_overlay={"url": url}, cache_dir=cache, **tiny64_kwargs())
    logits, expected = golden_logits(model)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    (cached,) = cache.iterdir()
    assert cached.read_bytes() == source.read_bytes()

    # offline afterwards: the source is gone, the cached copy serves
    moved = source.rename(source.with_suffix(".moved"))
    try:
        again = create(
            "dat_tiny", pretrained=True, pretrained_cfg_overlay={"url": url}, cache_dir=cache, **tiny64_kwargs()
        )
    finally:
        moved.rename(source)
    torch.testing.assert_close(golden_logits(again)[0], expected, atol=1e-5, rtol=0)


def test_wrong_hash_is_refused_and_not_cached(official_pth, tmp_path):
    source, sha = official_pth
    wrong = "0" * 64
    with pytest.raises(ValueError, match=f"SHA-256 {sha}, expected {wrong}: refused"):
        dv.create_model(
            "dat_tiny",
            pretrained=True,
            pretrained_cfg_overlay={"url": f"{source.as_uri()}#sha256={wrong}"},
            cache_dir=tmp_path,
            **tiny64_kwargs(),
        )
    assert list(tmp_path.iterdir()) == []


def test_damaged_cache_is_refused(official_pth, tmp_path):
    source, sha = official_pth
    url = f"{source.as_uri()}#sha256={sha}"
    dv.create_model(
        "dat_tiny", pretrained=True, pretrained_cfg_overlay={"url": url}, cache_dir=tmp_path, **tiny64_kwargs()
    )
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(cached.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"cached weights {re.escape(str(cached))} have SHA-256 .*delete it"):
        dv.create_model(
            "dat_tiny", pretrained=True, pretrained_cfg_overlay={"url": url}, cache_dir=tmp_path, **tiny64_kwargs()
        )


def test_unpinned_weights_record_first_digest(official_pth, tmp_path, caplog):
    source, sha = official_pth
    overlay = {"url": source.as_uri()}
    dv.create_model("dat_tiny", pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=tmp_path, **tiny64_kwargs())
    assert "no pinned SHA-256" in caplog.text
    (record,) = tmp_path.glob("*.sha256")
    assert record.read_text().strip() == sha
    (cached,) = (p for p in tmp_path.iterdir() if p.suffix == ".pth")
    cached.write_bytes(b"not the file that was downloaded")
    with pytest.raises(ValueError, match=f"expected {sha}"):
        dv.create_model(
            "dat_tiny", pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=tmp_path, **tiny64_kwargs()
        )


def test_unreachable_weights_say_what_to_do(tmp_path):
    url = (tmp_path / "missing.pth").as_uri()
    with pytest.raises(RuntimeError, match="cannot download pretrained weights .* pass checkpoint=PATH"):
        dv.create_model("dat_tiny", pretrained=True, pretrained_cfg_overlay={"url": url}, cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob(".*.tmp-*"))  # the temporary of the failed download is removed


def test_url_fragment_must_be_a_sha256():
    assert split_url("https://h/f.pth") == ("https://h/f.pth", None)
    assert split_url("https://h/f.pth#sha256=" + "a" * 64) == ("https://h/f.pth", "a" * 64)
    with pytest.raises(ValueError, match="sha256="):
        split_url("https://h/f.pth#md5=abc")


def test_published_weights_and_tags():
    names = dv.list_models(pretrained=True)
    assert {"dat_tiny.in1k", "dat_small.in1k", "dat_base.in1k", "dat_base_384.in1k"} <= set(names)
    assert {
        f"deformable_detr_r50{v}.coco" for v in ("", "_single_scale", "_single_scale_dc5", "_box_refine", "_two_stage")
    } <= set(names)
    for name in names:
        url = dv.models.get_pretrained_cfg(name).url
        assert url.startswith("https://"), name
        if name.startswith("deformable_detr"):  # the Hub files are pinned to a revision and a digest
            assert split_url(url)[1] is not None and "/resolve/main/" not in url, name
    assert timm.list_pretrained("dat_*") == ["dat_base.in1k", "dat_base_384.in1k", "dat_small.in1k", "dat_tiny.in1k"]


def test_name_tags_and_argument_errors(tmp_path):
    model = dv.create_model("dat_tiny.in1k", dims=(24, 48, 96, 192))
    assert model.pretrained_cfg["tag"] == "in1k" and model.pretrained_cfg["architecture"] == "dat_tiny"
    with pytest.raises(
        ValueError, match="no pretrained cfg 'dat_tiny.in22k'; known for 'dat_tiny': \\['dat_tiny.in1k'\\]"
    ):
        dv.create_model("dat_tiny.in22k")
    with pytest.raises(ValueError, match="either pretrained=True or checkpoint=PATH"):
        dv.create_model("dat_tiny", pretrained=True, checkpoint=tmp_path / "x.pth")
    with pytest.raises(ValueError, match="no pretrained weights are published for deformable_detr_dat_digits"):
        dv.create_model("deformable_detr_dat_digits", pretrained=True)
