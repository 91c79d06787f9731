"""Generated pictures and their encodings, for the image tests."""

from __future__ import annotations

import base64
import http.server
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

SLOW_RESPONSE_S = 2.0


def picture(width: int = 24, height: int = 16, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


@contextmanager
def http_server(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1, in its own thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def write_image_folder(folder: Path) -> Path:
    """Two pictures, a copy of the first that the image server sends slowly, and a file that
    is not an image."""
    picture(seed=1).save(folder / "one.png")
    picture(seed=1).save(folder / "slow.png")
    picture(32, 20, seed=2).save(folder / "two.jpg", quality=95)
    (folder / "not-an-image.png").write_bytes(b"1234")
    return folder


class ImageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder quietly, ``/slow.png`` after SLOW_RESPONSE_S seconds."""

    def do_GET(self) -> None:
        if self.path == "/slow.png":
            time.sleep(SLOW_RESPONSE_S)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass
