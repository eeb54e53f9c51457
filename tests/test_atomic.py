"""deformvision._atomic: the writers every module uses, and their failure behaviour."""

import json

import numpy as np
import pytest
from PIL import Image

from deformvision._atomic import (
    append_lines,
    atomic_write,
    remove_stale_temporaries,
    save_image_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_json_and_text_are_replaced_whole(tmp_path):
    path = tmp_path / "m.json"
    assert write_json_atomic(path, {"a": [1, 2]}) == path
    assert json.loads(path.read_text()) == {"a": [1, 2]} and path.read_text().endswith("\n")
    write_text_atomic(path, "é\n")
    assert path.read_bytes() == "é\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_a_failing_writer_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"version": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"version": object()})

    def half(tmp):
        tmp.write_bytes(b'{"vers')
        raise KeyboardInterrupt  # interrupted mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half)
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


@pytest.mark.parametrize(("name", "format_name"), [("a.png", "PNG"), ("b.JPG", "JPEG"), ("c.webp", "WEBP")])
def test_images_are_saved_in_the_format_of_their_suffix(tmp_path, name, format_name):
    pixels = np.arange(16 * 24 * 3, dtype=np.uint8).reshape(16, 24, 3)
    save_image_atomic(Image.fromarray(pixels), tmp_path / name)
    with Image.open(tmp_path / name) as image:
        assert image.format == format_name and image.size == (24, 16)
        if format_name == "PNG":  # lossless
            assert np.array_equal(np.asarray(image), pixels)


def test_append_lines_adds_whole_lines_in_order(tmp_path):
    path = tmp_path / "log.jsonl"
    append_lines(path, [])
    assert not path.exists()
    append_lines(path, ['{"step": 1}'])
    append_lines(path, ['{"step": 2}', '{"step": 3}'])
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_remove_stale_temporaries_removes_only_temporaries(tmp_path):
    for name in (".w.safetensors.tmp-123", "w.safetensors", ".hidden", "notes.tmp-1"):
        (tmp_path / name).write_text("x")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "notes.tmp-1", "w.safetensors"]
