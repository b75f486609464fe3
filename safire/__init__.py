"""SAFIRE (Segment Any Forged Image Region, AAAI 2025) for CPUs and GPUs: build, load, predict,
partition.

>>> import numpy as np
>>> from safire import build_safire, SafirePredictor, partition
>>> model = build_safire()                      # the embedded default model (native resolution)
>>> predictor = SafirePredictor(model)
>>> image = np.zeros((480, 640, 3), np.uint8)   # HxWx3 uint8 RGB, any size
>>> emb = predictor.set_image(image)            # the encoder runs once; the embedding is cached
>>> click = predictor.predict(np.array([[320, 240]]), np.array([1]))
>>> click.mask.shape                            # the source region under the click, HxW bool
(480, 640)
>>> result = partition(predictor, image)        # every source of the image ("auto" number)
>>> result.labels.shape, result.num_sources
((480, 640), 1)

``build_safire(checkpoint="safire.pth")`` loads the official weights (SAM ViT-B + adapter; squash
to 1024x1024); ``build_safire("native_micro")`` builds a random test-size model.
"""

from .build import DEFAULT_CHECKPOINT, build_safire, resolve_device
from .config import VARIANTS, SafireConfig, get_config
from .modeling import Safire
from .partition import PartitionResult, partition
from .predictor import ImageEmbedding, MaskPrediction, SafirePredictor

__all__ = [
    "build_safire",
    "SafirePredictor",
    "partition",
    "PartitionResult",
    "MaskPrediction",
    "ImageEmbedding",
    "Safire",
    "SafireConfig",
    "VARIANTS",
    "get_config",
    "resolve_device",
    "DEFAULT_CHECKPOINT",
]
