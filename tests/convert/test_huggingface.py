"""Hugging Face ``DeformableDetrForObjectDetection`` -> our detector: same outputs after conversion.

Each variant is a randomly initialised Hugging Face model (transformers 5.x, its own ResNet-50 backbone,
a narrow transformer) with every parameter and buffer perturbed (Hugging Face zero-initialises some),
converted by our checkpoint filter and run on a padded batch of two images (Hugging Face's ``pixel_mask`` is
1 = valid, our mask True = padding).

Measured in float32: max |diff| <= 4.2e-7 on the logits and 1.2e-7 on the boxes of every decoder layer,
9.5e-7 on the two-stage proposal logits (logits of magnitude ~1). In float64: <= 9.5e-8, consistent with our
positional encodings being computed in float32 (as the official code), Hugging Face's in the input dtype.

Hugging Face ties ``class_embed`` across decoder layers in box refinement without two-stage; ``state_dict()``
then repeats one head per layer and ``save_pretrained`` writes only ``class_embed.0``, which the converter
copies to every layer (so the converted model computes what the Hugging Face model computes).
"""

import functools

import pytest
import torch
from safetensors.torch import load_file

from deformvision.convert import convert_checkpoint, huggingface_model_config, huggingface_to_official
from deformvision.models import create_model
from deformvision.models._checkpoint import check_state_dict

transformers = pytest.importorskip("transformers")

NUM_CLASSES, NUM_QUERIES = 5, 12
SIZES = dict(
    d_model=64,
    encoder_layers=2,
    decoder_layers=3,
    encoder_ffn_dim=96,
    decoder_ffn_dim=96,
    encoder_n_points=2,
    decoder_n_points=3,
)
OURS = dict(d_model=64, enc_layers=2, dec_layers=3, dim_feedforward=96, enc_n_points=2, dec_n_points=3)
VARIANTS = {  # our model name -> Hugging Face flags
    "deformable_detr_r50": dict(num_feature_levels=4),
    "deformable_detr_r50_single_scale": dict(num_feature_levels=1),
    "deformable_detr_r50_box_refine": dict(num_feature_levels=4, with_box_refine=True),
    "deformable_detr_r50_two_stage": dict(num_feature_levels=4, with_box_refine=True, two_stage=True),
}
ATOL = 1e-5


def huggingface_model(flags: dict) -> torch.nn.Module:
    """A random Hugging Face detector with every floating parameter and buffer perturbed, in eval mode."""
    stages = ["stage4"] if flags["num_feature_levels"] == 1 else ["stage2", "stage3", "stage4"]
    config = transformers.DeformableDetrConfig(
        backbone_config=transformers.ResNetConfig(out_features=stages),
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_labels=NUM_CLASSES,
        num_queries=NUM_QUERIES,
        two_stage_num_proposals=NUM_QUERIES,
        auxiliary_loss=True,
        **SIZES,
        **flags,
    )
    torch.manual_seed(0)
    model = transformers.DeformableDetrForObjectDetection(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            else:
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))
    return model


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images, 64x80 and 50x60 (zero-padded at the bottom/right), and the mask (True = padding)."""
    images = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 64, 80, dtype=torch.bool)
    mask[1, 50:] = True
    mask[1, :, 60:] = True
    images[1][:, mask[1]] = 0
    return images, mask


def huggingface_outputs(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor) -> dict:
    """The Hugging Face outputs in our layout. Dummy labels make it return the intermediate layers' outputs."""
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * len(images)
    with torch.no_grad():
        out = model(pixel_values=images, pixel_mask=(~mask).long(), labels=labels)
    converted = {
        "pred_logits": out.logits,
        "pred_boxes": out.pred_boxes,
        "aux_outputs": [{"pred_logits": a["logits"], "pred_boxes": a["pred_boxes"]} for a in out.auxiliary_outputs],
    }
    if out.enc_outputs_class is not None:
        converted["enc_outputs"] = {
            "pred_logits": out.enc_outputs_class,
            "pred_boxes": out.enc_outputs_coord_logits.sigmoid(),
        }
    return converted


def assert_same_outputs(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs)
    assert len(ours["aux_outputs"]) == len(theirs["aux_outputs"]) == SIZES["decoder_layers"] - 1
    pairs = [("", ours, theirs), ("enc_outputs.", ours.get("enc_outputs"), theirs.get("enc_outputs"))]
    aux = zip(ours["aux_outputs"], theirs["aux_outputs"], strict=True)
    pairs += [(f"aux_outputs.{i}.", a, b) for i, (a, b) in enumerate(aux)]
    for prefix, a, b in pairs:
        if a is None and b is None:
            continue
        for key in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=0, msg=lambda m, k=prefix + key: f"{k}: {m}")


def build_ours(name: str, **kwargs) -> torch.nn.Module:
    return create_model(name, num_classes=NUM_CLASSES, num_queries=NUM_QUERIES, **OURS, **kwargs).eval()


@functools.cache
def converted_pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The perturbed Hugging Face model of a variant and our model loaded from its ``state_dict()`` (cached)."""
    hf_model = huggingface_model(VARIANTS[name])
    ours = build_ours(name)
    converted = ours.checkpoint_filter(hf_model.state_dict())
    check_state_dict(ours, converted)
    ours.load_state_dict(converted)
    return hf_model, ours


@pytest.mark.parametrize("name", VARIANTS)
def test_converted_model_gives_the_same_outputs(name):
    hf_model, ours = converted_pair(name)
    images, mask = padded_batch()
    with torch.no_grad():
        outputs = ours(images, mask)
    assert_same_outputs(outputs, huggingface_outputs(hf_model, images, mask))


@pytest.mark.parametrize("name", [n for n in VARIANTS if "single_scale" not in n])
def test_saved_directory_loads_through_create_model_and_convert(name, tmp_path):
    """``save_pretrained`` writes legacy names and drops tied heads: both loading paths give the same weights."""
    hf_model, ours = converted_pair(name)
    expected = ours.state_dict()
    hf_model.save_pretrained(tmp_path / "hf")
    loaded = build_ours(name, checkpoint=tmp_path / "hf").state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())

    result = convert_checkpoint(tmp_path / "hf", tmp_path / "ours.safetensors")  # model and sizes from config.json
    assert result.model == name
    assert result.model_kwargs == {
        "num_classes": NUM_CLASSES,
        "num_queries": NUM_QUERIES,
        "num_heads": 8,
        "num_feature_levels": VARIANTS[name]["num_feature_levels"],
        **OURS,
    }
    written = load_file(tmp_path / "ours.safetensors")
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[key], value) for key, value in expected.items())


def test_pytorch_bin_file_loads(tmp_path):
    name = "deformable_detr_r50_box_refine"
    hf_model, ours = converted_pair(name)
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = build_ours(name, checkpoint=tmp_path / "pytorch_model.bin").state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in ours.state_dict().items())


def test_decoder_self_attention_is_packed_q_k_v():
    state_dict = {
        f"model.decoder.layers.0.self_attn.{part}_proj.{kind}": torch.full((4, 4) if kind == "weight" else (4,), i)
        for i, part in enumerate("qkv")
        for kind in ("weight", "bias")
    }
    converted = huggingface_to_official(state_dict)
    packed = converted["transformer.decoder.layers.0.self_attn.in_proj_weight"]
    assert packed.shape == (12, 4) and packed[:4].eq(0).all() and packed[4:8].eq(1).all() and packed[8:].eq(2).all()
    assert converted["transformer.decoder.layers.0.self_attn.in_proj_bias"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    del state_dict["model.decoder.layers.0.self_attn.v_proj.bias"]
    with pytest.raises(ValueError, match="needs q, k and v"):
        huggingface_to_official(state_dict)


def test_keys_without_official_counterpart_raise():
    learned = "model.backbone.position_embedding.row_embeddings.weight"  # position_embedding_type="learned"
    state_dict = {"model.level_embed": torch.zeros(4, 8), learned: torch.zeros(50, 128)}
    with pytest.raises(ValueError, match="row_embeddings"):
        huggingface_to_official(state_dict)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"activation_function": "gelu"}, "activation_function"),
        ({"encoder_ffn_dim": 512}, "encoder_ffn_dim 512 != decoder_ffn_dim"),
        ({"two_stage": True, "with_box_refine": True, "two_stage_num_proposals": 100}, "two_stage_num_proposals"),
    ],
)
def test_unsupported_config_is_refused(change, message):
    config = transformers.DeformableDetrConfig(**change).to_dict()
    with pytest.raises(ValueError, match=message):
        huggingface_model_config(config)
