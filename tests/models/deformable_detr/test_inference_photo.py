"""Every registered Deformable DETR variant on real photographs (random weights, CPU, eval mode).

Two scikit-image sample photos of different sizes (the cat ``chelsea``, 300x451 -> 256x384, and a portrait
crop of ``astronaut``, 512x300 -> 436x256) go through the evaluation transforms (shorter side 256) as one
padded batch; :class:`PostProcess` turns the outputs into the top-100 detections of each image, scaled to
that image's own size.

The tests run on one thread: when the CPU cores are shared with other jobs that is faster (24 s instead of
32 s for the file with two busy processes beside it; 14 s instead of 9 s on idle cores).

Boxes are not clipped to the image (the official post-processing does not clip): their centres lie inside
the image, but with random weights 4-38% of the top-100 boxes reach past an edge, by up to ~22 pixels.
"""

import pytest
import torch
from PIL import Image

from deformvision.data.transforms_det import build_detection_transforms
from deformvision.models import create_model, list_models
from deformvision.models.deformable_detr import PostProcess

skimage_data = pytest.importorskip("skimage.data")

NUM_SELECT = 100


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    """Two normalised ``(3, H, W)`` photos of different heights and widths."""
    transform = build_detection_transforms(train=False, val_size=256, max_size=512)
    images = [skimage_data.chelsea(), skimage_data.astronaut()[:, 100:400]]
    return [transform(Image.fromarray(image), {})[0] for image in images]


@pytest.mark.parametrize("name", list_models("deformable_detr_*"))
def test_detections_on_a_batch_of_two_photos_are_well_formed(name, photos):
    assert [tuple(p.shape[1:]) for p in photos] == [(256, 384), (436, 256)]
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        outputs = model(photos)  # padded to one (2, 3, 436, 384) batch
    sizes = torch.tensor([p.shape[1:] for p in photos])
    detections = PostProcess(NUM_SELECT)(outputs, sizes)

    assert len(detections) == len(photos)
    for detection, (height, width) in zip(detections, sizes.tolist(), strict=True):
        scores, labels, boxes = detection["scores"], detection["labels"], detection["boxes"]
        assert scores.shape == labels.shape == (NUM_SELECT,) and boxes.shape == (NUM_SELECT, 4)
        assert ((scores >= 0) & (scores <= 1)).all() and (scores[:-1] >= scores[1:]).all()
        assert labels.dtype == torch.int64 and ((labels >= 0) & (labels < model.num_classes)).all()
        assert torch.isfinite(boxes).all()
        x0, y0, x1, y1 = boxes.unbind(1)
        assert (x0 <= x1).all() and (y0 <= y1).all()
        # In the image's own pixels: the centres lie inside this image, not just inside the padded batch.
        centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
        assert ((centre_x > 0) & (centre_x < width) & (centre_y > 0) & (centre_y < height)).all()
