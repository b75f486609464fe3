"""Dataset readers: the safire-studio layout, SafireMS folders and binary image/mask pairs.

Every reader yields :class:`Item` records with the same conventions:

* ``image``: ``H x W x 3`` uint8 RGB (greyscale, palette, RGBA, CMYK and 16-bit images are
  converted; alpha is dropped);
* ``labels``: ``H x W`` uint8 source index, ``0`` = the largest/authentic source,
  ``1..K-1`` = other sources, :data:`IGNORE` (255) = unlabelled pixels;
* ``num_sources``: number of sources (``1`` = authentic).

Readers:

* :class:`SafireDataset` -- the folder layout of ``docs/dataset-format.md`` (``safire synth``,
  ``safire export``): labels from ``sources/``, else ``masks_safirems/``, else ``masks_binary/``.
* :class:`SafireMSDataset` -- SafireMS(-Expert) style: grey masks with value ``50*i`` = source
  ``i``, list file lines ``img,mask`` (``None`` = authentic) relative to the root.
* :class:`BinaryPairsDataset` -- CASIA-style binary pairs from a ``img,mask`` list file, an
  IMDL-BenCo JSON list ``[[img, mask], [img, "Negative"]]`` or an in-memory list.
* :func:`open_dataset` -- picks one of the above from a path.

Problems (missing or unreadable files, image/mask size mismatch) raise :class:`DatasetError`
naming the offending file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IGNORE",
    "DatasetError",
    "Item",
    "SafireDataset",
    "SafireMSDataset",
    "BinaryPairsDataset",
    "open_dataset",
    "read_image",
    "read_mask",
    "decode_safirems",
    "decode_binary",
    "read_pair_list",
]

IGNORE = 255
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
_NONE_MASKS = {"", "none", "negative", "null"}


class DatasetError(Exception):
    """A dataset file is missing, unreadable or inconsistent (the message names the file)."""


@dataclass
class Item:
    """One image with its source labels.

    Attributes:
        name: sample name (image file name without extension).
        image: ``H x W x 3`` uint8 RGB.
        labels: ``H x W`` uint8; source index per pixel, :data:`IGNORE` = unlabelled.
        num_sources: number of sources (1 = authentic).
        meta: per-sample metadata (``meta/NAME.json`` for the safire layout).
        image_path: absolute path of the image file.
        mask_path: path of the mask the labels came from (``None`` for authentic images).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    num_sources: int
    meta: Dict[str, Any] = field(default_factory=dict)
    image_path: str = ""
    mask_path: Optional[str] = None

    @property
    def authentic(self) -> bool:
        return self.num_sources == 1

    @property
    def binary(self) -> np.ndarray:
        """``H x W`` uint8: 0 = source 0, 1 = any other source, 255 kept as ignore."""
        out = (self.labels >= 1).astype(np.uint8)
        out[self.labels == IGNORE] = IGNORE
        return out


# ---------------------------------------------------------------------------------------------
# File readers and decoders
# ---------------------------------------------------------------------------------------------

def _open(path: str, kind: str) -> Image.Image:
    if not os.path.isfile(path):
        raise DatasetError(f"{kind} file not found: {path}")
    try:
        im = Image.open(path)
        im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read {kind} {path}: {e}") from e
    return im


def _high_bit_depth_to_u8(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    if a.dtype == np.uint16 or (im.mode.startswith("I") and a.size and a.max() > 255):
        return (a.astype(np.uint32) >> 8).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def read_image(path: str, exif_transpose: bool = False) -> np.ndarray:
    """Read an image as ``H x W x 3`` uint8 RGB; raises :class:`DatasetError`."""
    im = _open(path, "image")
    try:
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            g = _high_bit_depth_to_u8(im)
            return np.repeat(g[:, :, None], 3, axis=2)
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}") from e
    finally:
        im.close()


def read_mask(path: str, raw_palette: bool = False) -> np.ndarray:
    """Read a single-channel ``H x W`` uint8 mask.

    Colour masks are converted to luminance. With ``raw_palette`` a palette ("P") image gives
    its palette indices (index masks), otherwise its grey values.
    """
    im = _open(path, "mask")
    try:
        if im.mode == "L" or (raw_palette and im.mode == "P"):
            return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            a = np.asarray(im)
            if a.size and a.max() <= 255:
                return a.astype(np.uint8)
            return _high_bit_depth_to_u8(im)
        return np.ascontiguousarray(np.asarray(im.convert("L"), dtype=np.uint8))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot decode mask {path}: {e}") from e
    finally:
        im.close()


def decode_safirems(mask: np.ndarray, strict: bool = False, path: str = "") -> np.ndarray:
    """SafireMS grey levels ``50*i`` -> source index ``i`` (0..5), nearest level.

    With ``strict`` a value farther than 12 grey levels from ``50*i`` raises DatasetError.
    """
    lab = np.clip(np.rint(mask.astype(np.float32) / 50.0), 0, 5).astype(np.uint8)
    if strict and np.any(np.abs(mask.astype(np.int16) - 50 * lab.astype(np.int16)) > 12):
        raise DatasetError(f"mask {path or '<array>'} has values that are not 50*i "
                           f"(found {np.unique(mask)[:12].tolist()})")
    return lab


def decode_binary(mask: np.ndarray, threshold: int = 127, nonzero: bool = False) -> np.ndarray:
    """Binary mask -> {0, 1}: ``> threshold`` (or ``> 0`` with ``nonzero``) is forged."""
    return (mask > (0 if nonzero else threshold)).astype(np.uint8)


def _fit_mask(mask: np.ndarray, shape_hw: Tuple[int, int], resize: bool, mask_path: str,
              image_path: str) -> np.ndarray:
    if mask.shape == tuple(shape_hw):
        return mask
    if resize:
        return np.asarray(Image.fromarray(mask).resize((shape_hw[1], shape_hw[0]),
                                                       Image.NEAREST), dtype=np.uint8)
    raise DatasetError(
        f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {image_path} is "
        f"{shape_hw[1]}x{shape_hw[0]}; pass resize_mismatched=True to resize the mask (nearest)")


def _num_sources(labels: np.ndarray) -> int:
    valid = labels[labels != IGNORE]
    return int(valid.max()) + 1 if valid.size else 1


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _resolve(root: str, rel: str) -> str:
    return rel if os.path.isabs(rel) else os.path.join(root, rel)


def _is_none_mask(m: Optional[str]) -> bool:
    return m is None or str(m).strip().lower() in _NONE_MASKS


def read_pair_list(path: str) -> List[Tuple[str, Optional[str], List[str]]]:
    """Parse a list file into ``(image, mask or None, extra columns)``.

    ``.json``: IMDL-BenCo list ``[[img, mask | "Negative"], ...]``; otherwise text lines
    ``img,mask[,extra...]`` (blank lines and ``#`` comments skipped, ``None`` = authentic).
    """
    if not os.path.isfile(path):
        raise DatasetError(f"list file not found: {path}")
    out: List[Tuple[str, Optional[str], List[str]]] = []
    if path.lower().endswith(".json"):
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot parse JSON list {path}: {e}") from e
        if not isinstance(data, list):
            raise DatasetError(f"JSON list {path} must be a list of [image, mask] pairs")
        for k, entry in enumerate(data):
            if (not isinstance(entry, (list, tuple)) or not entry
                    or not isinstance(entry[0], str)):
                raise DatasetError(f"{path}: entry {k} is not an [image, mask] pair: {entry!r}")
            mask = entry[1] if len(entry) > 1 else None
            out.append((entry[0], None if _is_none_mask(mask) else str(mask),
                        [str(x) for x in entry[2:]]))
        return out
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read list file {path}: {e}") from e
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split(",")]
        mask = cols[1] if len(cols) > 1 else None
        out.append((cols[0], None if _is_none_mask(mask) else mask, cols[2:]))
    return out


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------

class _Reader:
    """Common sequence behaviour; subclasses fill ``self._entries`` and implement ``_load``."""

    _entries: List[Any]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> Item:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, not {type(i).__name__}")
        n = len(self._entries)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        return self._load(self._entries[int(i) % n])

    def __iter__(self) -> Iterator[Item]:
        for i in range(len(self)):
            yield self[i]

    def _load(self, entry: Any) -> Item:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def names(self) -> List[str]:
        return [self._name(e) for e in self._entries]

    def _name(self, entry: Any) -> str:
        return _stem(entry[0])


class SafireDataset(_Reader):
    """The safire-studio dataset layout (``docs/dataset-format.md``).

    Args:
        root: the ``DATASET/`` folder.
        split: ``None`` (all samples), a split name (reads ``splits/NAME.txt``) or the path of a
            file with one sample name per line.
        resize_mismatched: resize masks whose size differs from the image (nearest) instead of
            raising.
        exif_transpose: apply the image's EXIF orientation (off: raw pixel order).

    Samples come from ``list.txt`` (first column) if present, else from the files in ``images/``.
    Labels come from ``sources/NAME.png`` (index mask, 255 = ignore), else
    ``masks_safirems/NAME.png`` (50*i), else ``masks_binary/NAME.png`` (>127); a sample whose
    list line says ``None`` and has no mask file is authentic (all 0).
    """

    def __init__(self, root: str, split: Optional[str] = None, *,
                 resize_mismatched: bool = False, exif_transpose: bool = False):
        if not os.path.isdir(root):
            raise DatasetError(f"dataset folder not found: {root}")
        self.root = os.path.abspath(root)
        self.resize_mismatched = resize_mismatched
        self.exif_transpose = exif_transpose
        self.manifest: Dict[str, Any] = {}
        mpath = os.path.join(self.root, "manifest.json")
        if os.path.isfile(mpath):
            try:
                with open(mpath, "r", encoding="utf-8") as f:
                    self.manifest = json.load(f)
            except (OSError, ValueError) as e:
                raise DatasetError(f"cannot parse {mpath}: {e}") from e
        entries: List[Tuple[str, Optional[str], bool]] = []  # (image rel, mask rel, listed None)
        lpath = os.path.join(self.root, "list.txt")
        if os.path.isfile(lpath):
            for img, mask, _extra in read_pair_list(lpath):
                entries.append((img, mask, mask is None))
        else:
            idir = os.path.join(self.root, "images")
            if not os.path.isdir(idir):
                raise DatasetError(f"{self.root} has neither list.txt nor images/")
            for fn in sorted(os.listdir(idir)):
                if fn.lower().endswith(_IMAGE_EXTS):
                    entries.append((os.path.join("images", fn), None, False))
        if split is not None:
            spath = split if os.path.isfile(split) else os.path.join(self.root, "splits",
                                                                     f"{split}.txt")
            if not os.path.isfile(spath):
                raise DatasetError(f"split file not found: {spath}")
            with open(spath, "r", encoding="utf-8") as f:
                wanted = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
            by_name = {_stem(e[0]): e for e in entries}
            missing = [n for n in wanted if n not in by_name]
            if missing:
                raise DatasetError(f"split file {spath} names samples that are not in the "
                                   f"dataset: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            entries = [by_name[n] for n in wanted]
        self.split = split
        self._entries = entries

    def _load(self, entry: Tuple[str, Optional[str], bool]) -> Item:
        img_rel, mask_rel, listed_none = entry
        name = _stem(img_rel)
        ipath = _resolve(self.root, img_rel)
        image = read_image(ipath, self.exif_transpose)
        hw = image.shape[:2]
        meta: Dict[str, Any] = {}
        meta_path = os.path.join(self.root, "meta", name + ".json")
        if os.path.isfile(meta_path):
            try:
                with open(meta_path, "r", encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, ValueError) as e:
                raise DatasetError(f"cannot parse {meta_path}: {e}") from e
        candidates = [
            (os.path.join(self.root, "sources", name + ".png"), "sources"),
            (os.path.join(self.root, "masks_safirems", name + ".png"), "safirems"),
            (os.path.join(self.root, "masks_binary", name + ".png"), "binary"),
        ]
        if mask_rel is not None:  # a list entry pointing elsewhere still counts
            kind = ("binary" if "binary" in mask_rel else
                    "sources" if mask_rel.startswith("sources") else "safirems")
            candidates.append((_resolve(self.root, mask_rel), kind))
        mpath: Optional[str] = None
        labels: Optional[np.ndarray] = None
        for path, kind in candidates:
            if not os.path.isfile(path):
                continue
            raw = _fit_mask(read_mask(path, raw_palette=(kind == "sources")), hw,
                            self.resize_mismatched, path, ipath)
            if kind == "sources":
                labels = raw
            elif kind == "safirems":
                labels = decode_safirems(raw, path=path)
            else:
                labels = decode_binary(raw)
            mpath = path
            break
        if labels is None:
            if mask_rel is not None:
                raise DatasetError(f"mask file not found for {name}: "
                                   f"{_resolve(self.root, mask_rel)}")
            if not (listed_none or meta.get("authentic") or meta.get("num_sources") == 1):
                raise DatasetError(f"no mask for {name}: looked for "
                                   f"{', '.join(p for p, _ in candidates)}")
            labels = np.zeros(hw, dtype=np.uint8)
        num = int(meta["num_sources"]) if "num_sources" in meta else _num_sources(labels)
        return Item(name=name, image=image, labels=labels, num_sources=num, meta=meta,
                    image_path=ipath, mask_path=mpath)


class SafireMSDataset(_Reader):
    """SafireMS(-Expert / -Auto) style list: ``img,mask`` lines, grey masks ``50*i`` = source
    ``i``, ``None`` = authentic. The number of sources is ``max label + 1`` (as in SAFIRE's
    metric).

    Args:
        root: folder the list's paths are relative to.
        list_file: the list file (absolute, relative to the cwd, or relative to ``root``).
        resize_mismatched: resize masks to the image size (nearest) instead of raising.
        strict: raise on mask values that are not close to a multiple of 50.
    """

    def __init__(self, root: str, list_file: str, *, resize_mismatched: bool = False,
                 strict: bool = False, exif_transpose: bool = False):
        if not os.path.isdir(root):
            raise DatasetError(f"dataset folder not found: {root}")
        self.root = os.path.abspath(root)
        if not os.path.isfile(list_file) and os.path.isfile(os.path.join(self.root, list_file)):
            list_file = os.path.join(self.root, list_file)
        self.list_file = list_file
        self._entries = read_pair_list(list_file)
        self.resize_mismatched = resize_mismatched
        self.strict = strict
        self.exif_transpose = exif_transpose

    def _load(self, entry: Tuple[str, Optional[str], List[str]]) -> Item:
        img_rel, mask_rel, extra = entry
        ipath = _resolve(self.root, img_rel)
        image = read_image(ipath, self.exif_transpose)
        hw = image.shape[:2]
        mpath = None
        if mask_rel is None:
            labels = np.zeros(hw, dtype=np.uint8)
        else:
            mpath = _resolve(self.root, mask_rel)
            raw = _fit_mask(read_mask(mpath), hw, self.resize_mismatched, mpath, ipath)
            labels = decode_safirems(raw, strict=self.strict, path=mpath)
        return Item(name=_stem(img_rel), image=image, labels=labels,
                    num_sources=_num_sources(labels),
                    meta={"list_file": self.list_file, "extra": extra}, image_path=ipath,
                    mask_path=mpath)


PairSpec = Union[str, Sequence[Sequence[Optional[str]]]]


class BinaryPairsDataset(_Reader):
    """Binary image/mask pairs (CASIA, IMD2020, IMDL-BenCo JSON, ...), labels in {0, 1}.

    Args:
        root: folder relative paths are resolved against.
        pairs: a ``.txt`` list (``img,mask`` lines, ``None`` = authentic), an IMDL-BenCo ``.json``
            list (``"Negative"`` = authentic), or an in-memory sequence of ``(img, mask)`` pairs.
        threshold: a mask pixel is forged when ``> threshold`` (default 127) ...
        nonzero: ... or when ``> 0`` if ``nonzero`` is set.
        resize_mismatched: resize masks to the image size (nearest) instead of raising.
    """

    def __init__(self, root: str, pairs: PairSpec, *, threshold: int = 127,
                 nonzero: bool = False, resize_mismatched: bool = False,
                 exif_transpose: bool = False):
        if not os.path.isdir(root):
            raise DatasetError(f"dataset folder not found: {root}")
        self.root = os.path.abspath(root)
        if isinstance(pairs, (str, os.PathLike)):
            pairs = str(pairs)
            if not os.path.isfile(pairs) and os.path.isfile(os.path.join(self.root, pairs)):
                pairs = os.path.join(self.root, pairs)
            self.list_file: Optional[str] = pairs
            self._entries = read_pair_list(pairs)
        else:
            self.list_file = None
            self._entries = []
            for k, p in enumerate(pairs):
                if not p or not isinstance(p[0], str):
                    raise DatasetError(f"pair {k} is not (image, mask): {p!r}")
                m = p[1] if len(p) > 1 else None
                self._entries.append((p[0], None if _is_none_mask(m) else str(m),
                                      [str(x) for x in p[2:]]))
        self.threshold = threshold
        self.nonzero = nonzero
        self.resize_mismatched = resize_mismatched
        self.exif_transpose = exif_transpose

    def _load(self, entry: Tuple[str, Optional[str], List[str]]) -> Item:
        img_rel, mask_rel, extra = entry
        ipath = _resolve(self.root, img_rel)
        image = read_image(ipath, self.exif_transpose)
        hw = image.shape[:2]
        mpath = None
        if mask_rel is None:
            labels = np.zeros(hw, dtype=np.uint8)
        else:
            mpath = _resolve(self.root, mask_rel)
            raw = _fit_mask(read_mask(mpath), hw, self.resize_mismatched, mpath, ipath)
            labels = decode_binary(raw, self.threshold, self.nonzero)
        return Item(name=_stem(img_rel), image=image, labels=labels,
                    num_sources=2 if labels.any() else 1,
                    meta={"list_file": self.list_file, "extra": extra}, image_path=ipath,
                    mask_path=mpath)


_SAFIREMS_LEVELS = {0, 50, 100, 150, 200, 250}


def open_dataset(path: str, root: Optional[str] = None, **kwargs: Any) -> _Reader:
    """Open a dataset, detecting its format.

    * ``synth:SPLIT?n=..&seed=..`` -> samples generated on demand
      (:class:`training.synth_reader.SynthReader`);
    * a folder with ``manifest.json`` (or ``images/`` plus ``sources/`` / ``masks_*``)
      -> :class:`SafireDataset`;
    * a ``.json`` list -> :class:`BinaryPairsDataset` (IMDL-BenCo);
    * a ``.txt`` list -> :class:`SafireMSDataset` if the (first 16) masks only hold SafireMS
      levels ``0, 50, ..., 250``, else :class:`BinaryPairsDataset` (e.g. 0/255 masks).

    List paths are relative to ``root`` (default: the list file's folder). ``kwargs`` go to
    the reader.
    """
    if path.startswith("synth:"):
        from .synth_reader import SynthReader

        return SynthReader.from_spec(path)
    if os.path.isdir(path):
        has_layout = os.path.isdir(os.path.join(path, "images")) and any(
            os.path.isdir(os.path.join(path, d))
            for d in ("sources", "masks_safirems", "masks_binary"))
        if os.path.isfile(os.path.join(path, "manifest.json")) or has_layout:
            return SafireDataset(path, **kwargs)
        raise DatasetError(f"{path} is not a safire dataset folder (no manifest.json); "
                           "pass a .txt or .json list file instead")
    if not os.path.isfile(path):
        raise DatasetError(f"dataset path not found: {path}")
    root = root or os.path.dirname(os.path.abspath(path))
    low = path.lower()
    if low.endswith(".json"):
        return BinaryPairsDataset(root, path, **kwargs)
    if low.endswith(".txt") or low.endswith(".csv") or low.endswith(".lst"):
        entries = read_pair_list(path)
        seen: set = set()
        checked = 0
        for _img, mask, _extra in entries:
            if mask is None:
                continue
            values = np.unique(read_mask(_resolve(root, mask)))
            seen.update(int(v) for v in values)
            checked += 1
            if checked >= 16 or not seen <= _SAFIREMS_LEVELS:
                break
        if seen <= _SAFIREMS_LEVELS:
            return SafireMSDataset(root, path, **kwargs)
        return BinaryPairsDataset(root, path, **kwargs)
    raise DatasetError(f"cannot tell the format of {path} (expected a folder, .txt or .json)")
