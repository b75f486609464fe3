"""The offline photo pool used by the synthetic forgery generator (``training.synth``).

Only photographs that ship *inside* installed wheels are used, so generation never touches the
network: the bundled scikit-image sample images (read straight from the ``skimage/data`` folder,
never through the ``skimage.data`` fetchers) and scikit-learn's two sample images. Licences and
sources are listed in ``docs/photos.md``.

A fixed subset (:data:`VAL_PHOTOS`) is held out for validation: ``PhotoPool.load("train")`` never
contains it, so no validation photo is ever used as a host *or* a donor of a training sample.

Images are ``H x W x 3`` uint8 RGB. Greyscale photographs are replicated to three channels and
flagged ``grey=True``; the generator only splices colour donors into colour hosts.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["Photo", "PhotoPool", "PHOTO_SPECS", "VAL_PHOTOS", "PhotoSpec"]


@dataclass(frozen=True)
class PhotoSpec:
    """Where a bundled photograph lives and how the pool uses it."""

    name: str
    package: str  # "scikit-image" | "scikit-learn"
    filename: str  # file name inside the package's data folder
    licence: str
    grey: bool = False
    weight: float = 1.0  # relative probability of being picked (host or donor)
    # Usable region as fractions (top, left, bottom, right) of the photo, e.g. to skip the
    # black surround of the retina fundus photo.
    box: Tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


PHOTO_SPECS: Tuple[PhotoSpec, ...] = (
    # colour, scikit-image
    PhotoSpec("astronaut", "scikit-image", "astronaut.png", "public domain (NASA)"),
    PhotoSpec("chelsea", "scikit-image", "chelsea.png", "CC0 (Stefan van der Walt)"),
    PhotoSpec("coffee", "scikit-image", "coffee.png", "CC0 (Rachel Michetti)"),
    PhotoSpec("motorcycle_left", "scikit-image", "motorcycle_left.png",
              "Middlebury 2014 stereo benchmark (academic use; see docs/photos.md)", weight=0.7),
    PhotoSpec("motorcycle_right", "scikit-image", "motorcycle_right.png",
              "Middlebury 2014 stereo benchmark (academic use; see docs/photos.md)", weight=0.7),
    PhotoSpec("rocket", "scikit-image", "rocket.jpg", "public domain (SpaceX)"),
    PhotoSpec("hubble_deep_field", "scikit-image", "hubble_deep_field.jpg",
              "public domain (NASA)", weight=0.4),
    PhotoSpec("retina", "scikit-image", "retina.jpg", "CC0 (Mikael Haggstrom)", weight=0.4,
              box=(0.17, 0.17, 0.83, 0.83)),
    PhotoSpec("ihc", "scikit-image", "ihc.png", "no known copyright restrictions (CMMI)",
              weight=0.5),
    # colour, scikit-learn
    PhotoSpec("china", "scikit-learn", "china.jpg", "CC-BY 2.0 (danielbuechele on Flickr)"),
    PhotoSpec("flower", "scikit-learn", "flower.jpg", "CC-BY 2.0 (vultilion on Flickr)"),
    # greyscale, scikit-image
    PhotoSpec("camera", "scikit-image", "camera.png", "CC0 (Lav Varshney)", grey=True, weight=0.5),
    PhotoSpec("brick", "scikit-image", "brick.png", "CC0 (CC0Textures)", grey=True, weight=0.3),
    PhotoSpec("grass", "scikit-image", "grass.png", "CC0 (linolafett)", grey=True, weight=0.3),
    PhotoSpec("gravel", "scikit-image", "gravel.png", "CC0 (CC0Textures)", grey=True, weight=0.3),
    PhotoSpec("coins", "scikit-image", "coins.png",
              "no known copyright restrictions (Brooklyn Museum)", grey=True, weight=0.3),
)

#: Photos held out for validation: never used (as host or donor) by ``split="train"``.
VAL_PHOTOS: Tuple[str, ...] = ("coffee", "rocket", "flower")


@dataclass(frozen=True)
class Photo:
    """One decoded photograph of the pool.

    Attributes:
        name: short name, e.g. ``"astronaut"``.
        image: ``H x W x 3`` uint8 RGB (read-only).
        spec: where it comes from and its licence.
    """

    name: str
    image: np.ndarray
    spec: PhotoSpec

    @property
    def grey(self) -> bool:
        return self.spec.grey

    @property
    def weight(self) -> float:
        return self.spec.weight

    @property
    def usable_box(self) -> Tuple[int, int, int, int]:
        """Usable region in pixels, ``(top, left, bottom, right)``."""
        h, w = self.image.shape[:2]
        t, l, b, r = self.spec.box
        return int(round(t * h)), int(round(l * w)), int(round(b * h)), int(round(r * w))

    @functools.cached_property
    def pil(self) -> Image.Image:
        """The usable region as a PIL image (cached; used for fast crop+resize)."""
        t, l, b, r = self.usable_box
        return Image.fromarray(np.ascontiguousarray(self.image[t:b, l:r]))


def _package_dir(package: str) -> str:
    if package == "scikit-image":
        import skimage

        return os.path.join(os.path.dirname(skimage.__file__), "data")
    if package == "scikit-learn":
        import sklearn

        return os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    raise ValueError(f"unknown package {package!r}")


@functools.lru_cache(maxsize=None)
def _load_photo(name: str) -> Photo:
    spec = {s.name: s for s in PHOTO_SPECS}[name]
    path = os.path.join(_package_dir(spec.package), spec.filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"bundled photo {name!r} not found at {path} (is {spec.package} installed?)")
    with Image.open(path) as im:
        if spec.grey:
            arr = np.asarray(im.convert("L"))
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        else:
            arr = np.asarray(im.convert("RGB"))
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    arr.setflags(write=False)
    return Photo(name=name, image=arr, spec=spec)


class PhotoPool:
    """A set of bundled photographs for one split.

    Use :meth:`load`; ``split="train"`` excludes :data:`VAL_PHOTOS`, ``split="val"`` is exactly
    :data:`VAL_PHOTOS`, ``split="all"`` is everything. Photos are decoded once per process.
    """

    def __init__(self, photos: Sequence[Photo], split: str = "custom"):
        if not photos:
            raise ValueError("a PhotoPool needs at least one photo")
        self.photos: List[Photo] = list(photos)
        self.split = split
        self._by_name: Dict[str, Photo] = {p.name: p for p in self.photos}

    @classmethod
    def load(cls, split: str = "train", names: Optional[Sequence[str]] = None) -> "PhotoPool":
        """Load the pool for ``split`` ("train" | "val" | "all"), optionally restricted to
        ``names``."""
        all_names = [s.name for s in PHOTO_SPECS]
        if split == "train":
            chosen = [n for n in all_names if n not in VAL_PHOTOS]
        elif split == "val":
            chosen = list(VAL_PHOTOS)
        elif split == "all":
            chosen = all_names
        else:
            raise ValueError(f"split must be 'train', 'val' or 'all', not {split!r}")
        if names is not None:
            unknown = set(names) - set(chosen)
            if unknown:
                raise ValueError(f"photos {sorted(unknown)} are not in split {split!r}")
            chosen = [n for n in chosen if n in set(names)]
        return cls([_load_photo(n) for n in chosen], split=split)

    @property
    def names(self) -> List[str]:
        return [p.name for p in self.photos]

    def __len__(self) -> int:
        return len(self.photos)

    def __iter__(self):
        return iter(self.photos)

    def __getitem__(self, name: str) -> Photo:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def choose(self, rng: np.random.Generator, *, colour_only: bool = False,
               exclude: Sequence[str] = ()) -> Photo:
        """Pick a photo with probability proportional to its weight.

        Falls back to ignoring ``exclude`` (then ``colour_only``) when nothing else is left.
        """
        for cands in (
            [p for p in self.photos if p.name not in exclude and not (colour_only and p.grey)],
            [p for p in self.photos if not (colour_only and p.grey)],
            self.photos,
        ):
            if cands:
                break
        w = np.array([p.weight for p in cands], dtype=np.float64)
        return cands[int(rng.choice(len(cands), p=w / w.sum()))]
