"""One self-contained HTML page of figures and tables (images embedded as base64 PNG)."""

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from deformvision._atomic import write_text_atomic


def _png_data(image: Image.Image | Path) -> str:
    data = Path(image).read_bytes() if isinstance(image, Path) else _png_bytes(image)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_html_report(
    path: str | Path, title: str, sections: Sequence[tuple[str, str, Sequence[Image.Image | Path]]]
) -> Path:
    """Write an HTML page: a title, then per section a heading, a paragraph or table and its images.

    Args:
        path: the ``.html`` file to write.
        title: the page title.
        sections: ``(heading, html_body, images)``; ``html_body`` is inserted as is (build it with
            :func:`html_table` or escape it), each image (PIL or a PNG file) is embedded.

    Returns:
        ``path``.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em} img{max-width:100%;margin:4px 0} "
        "table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    for heading, body, images in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
        parts += [f'<div><img src="{_png_data(image)}" alt="{html.escape(heading)}"></div>' for image in images]
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))
    return Path(path)


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table, cells escaped."""
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
