"""Task images for the export: a local lookup (``--images-root``), fetch helpers, and loading an
image file with its EXIF orientation and the bytes to write into the dataset.
"""

from __future__ import annotations

import inspect
import io
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlparse

from PIL import Image

from ml_backend.lsclient import ImageFetchError, LabelStudioError

__all__ = ["FetchImage", "LocalImageResolver"]

FetchImage = Callable[..., bytes]
_KEEP_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}
ExportError = LabelStudioError

# ----------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------

_UUID_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


class LocalImageResolver:
    """Find the image of a task URL under a local directory (``--images-root``).

    Tried in order, relative to ``root``: the ``?d=`` path of ``/data/local-files/`` URLs; for
    ``/data/upload/<pid>/<file>`` URLs ``upload/<pid>/<file>``, ``media/upload/<pid>/<file>``,
    ``<pid>/<file>``; for cloud URIs ``bucket/key`` and ``key``; for other URLs every suffix
    of the path (``a/b/c.png``, ``b/c.png``);
    finally the bare file name, also without the 8-hex-digit prefix Label Studio adds to
    uploads (``8e5f7079-photo.jpg`` -> ``photo.jpg``). Paths never escape ``root``.
    """

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise ExportError(f"images root {root!r} is not a directory")

    def candidates(self, url: str) -> List[str]:
        u = urlparse(url)
        path = unquote(u.path or "")
        rels: List[str] = []
        base_of = path
        upload = re.search(r"/data/upload/(\d+)/(.+)$", path)
        if "local-files" in path:
            d = parse_qs(u.query).get("d")
            if d:
                rels.append(d[0].lstrip("/"))
                base_of = d[0]
        elif upload:
            pid, fname = upload.group(1), upload.group(2)
            rels += [f"upload/{pid}/{fname}", f"media/upload/{pid}/{fname}", f"{pid}/{fname}"]
        elif u.scheme in ("s3", "gs", "gcs", "azure-blob"):
            rels += [f"{u.netloc}{path}", path.lstrip("/")]
        elif path:
            parts = [x for x in path.split("/") if x]
            rels += ["/".join(parts[i:]) for i in range(len(parts))]  # every path suffix
        base = os.path.basename(base_of)
        if base:
            rels.append(base)
            mm = _UUID_PREFIX.match(base)
            if mm:
                rels.append(mm.group(1))
        return [r for r in dict.fromkeys(rels) if r]

    def find(self, url: str) -> Optional[str]:
        for rel in self.candidates(url):
            p = os.path.realpath(os.path.join(self.root, rel))
            if (p == self.root or p.startswith(self.root + os.sep)) and os.path.isfile(p):
                return p
        return None

    def __call__(self, url: str) -> bytes:
        p = self.find(url)
        if p is None:
            raise ImageFetchError(f"{url}: not found under {self.root}")
        with open(p, "rb") as f:
            return f.read()


def _call_fetch(fetch: FetchImage, url: str, task_id: Any) -> bytes:
    try:
        params = inspect.signature(fetch).parameters
        takes_id = "task_id" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_id = False
    data = fetch(url, task_id=task_id) if takes_id else fetch(url)
    if isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            data = f.read()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageFetchError(f"{url}: fetch_image returned {type(data).__name__}, expected bytes")
    return bytes(data)


def _chain(fetchers: Sequence[FetchImage]) -> FetchImage:
    def fetch(url: str, task_id: Any = None) -> bytes:
        errors = []
        for f in fetchers:
            try:
                return _call_fetch(f, url, task_id)
            except Exception as exc:
                errors.append(str(exc))
        raise ImageFetchError("; ".join(errors))

    return fetch


_ORIENT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


@dataclass
class _LoadedImage:
    data: bytes
    ext: str
    width: int  # as displayed (EXIF orientation applied)
    height: int
    raw_width: int
    raw_height: int
    orientation: int
    format: str
    pil: Image.Image


def _load_image(data: bytes, max_pixels: int = 40_000_000) -> _LoadedImage:
    im = Image.open(io.BytesIO(data))
    rw0, rh0 = im.size
    if rw0 * rh0 > max_pixels:
        raise ImageFetchError(f"image is {rw0}x{rh0} = {rw0 * rh0 / 1e6:.1f} MP, above the limit of "
                              f"{max_pixels / 1e6:.1f} MP (SAFIRE_MAX_PIXELS)")
    im.load()
    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        orientation = 1
    rw, rh = im.size
    w, h = (rh, rw) if orientation in (5, 6, 7, 8) else (rw, rh)
    fmt = (im.format or "").upper()
    ext = _KEEP_FORMATS.get(fmt, ".png")
    return _LoadedImage(data, ext, w, h, rw, rh, orientation, fmt, im)


def _image_bytes_for(img: _LoadedImage, oriented: bool) -> Tuple[bytes, str, bool]:
    """Bytes + extension to write. Returns (bytes, ext, reencoded)."""
    needs_turn = oriented and img.orientation in _ORIENT_TRANSPOSE
    if img.format in _KEEP_FORMATS and not needs_turn:
        return img.data, img.ext, False
    pil = img.pil
    if needs_turn:
        pil = pil.transpose(_ORIENT_TRANSPOSE[img.orientation])
    pil = pil.convert("RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), ".png", True
