"""predict's arguments: thresholds, top_k, batch size and image paths are checked before anything runs."""

import math

import numpy as np
import pytest
from PIL import Image

from deformvision.predict import check_score_threshold, check_top_k, collect_images, predict_files


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (math.nan, ValueError, r"score_threshold must be in \[0, 1\], got nan"),
        (-0.1, ValueError, r"score_threshold must be in \[0, 1\], got -0.1"),
        (1.5, ValueError, r"score_threshold must be in \[0, 1\], got 1.5"),
        (math.inf, ValueError, r"score_threshold must be in \[0, 1\], got inf"),
        ("0.5", TypeError, r"score_threshold must be a number in \[0, 1\], got '0.5'"),
        (True, TypeError, r"score_threshold must be a number in \[0, 1\], got True"),
    ],
)
def test_bad_score_thresholds_are_refused(value, error, message):
    with pytest.raises(error, match=message):
        check_score_threshold(value)


@pytest.mark.parametrize("value", [0, 0.0, 0.3, 1, 1.0])
def test_score_thresholds_in_range_pass(value):
    check_score_threshold(value)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, r"top_k must be an int >= 1, got 0"),
        (-3, ValueError, r"top_k must be an int >= 1, got -3"),
        (2.0, TypeError, r"top_k must be an int >= 1, got 2.0"),
        (None, TypeError, r"top_k must be an int >= 1, got None"),
    ],
)
def test_bad_top_k_is_refused(value, error, message):
    with pytest.raises(error, match=message):
        check_top_k(value)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"score_threshold": math.nan}, ValueError, r"score_threshold must be in \[0, 1\], got nan"),
        ({"top_k": 0}, ValueError, r"top_k must be an int >= 1, got 0"),
        ({"batch_size": 0}, ValueError, r"batch_size must be an int >= 1, got 0"),
        ({"batch_size": 2.5}, TypeError, r"batch_size must be an int >= 1, got 2.5"),
    ],
)
def test_predict_files_checks_arguments_before_reading_or_writing(tmp_path, kwargs, error, message):
    """The checks come first: no predictor is needed to reach them, and no output folder is created."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(error, match=message):
        predict_files(None, [tmp_path / "a.png"], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_single_path_is_one_input_and_non_paths_are_refused(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "one.png")
    assert collect_images(str(tmp_path / "one.png")) == [tmp_path / "one.png"]
    assert collect_images(tmp_path / "one.png") == [tmp_path / "one.png"]  # not its characters, one by one
    with pytest.raises(TypeError, match=r"inputs must be image or folder paths \(str or Path\), got 3"):
        collect_images([tmp_path / "one.png", 3])
    with pytest.raises(FileNotFoundError, match=r"no such image file or folder: .*missing.png"):
        collect_images([tmp_path / "missing.png"])
