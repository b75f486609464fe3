"""Synthetic multi-source forgeries, in the spirit of SafireMS-Auto, from offline photos only.

A sample is a *host* view of a pool photograph (random crop, scale, flip, colour jitter) with
``num_sources - 1`` foreign regions painted on top, each of which carries its own low-level
processing history. A history is camera-like: optics blur, photo-response non-uniformity (a
per-source multiplicative fixed pattern), signal-dependent noise with its own level, spatial
correlation, chroma share and per-channel gains, a colour-filter-array trace (the image re-sampled
through a Bayer mosaic and demosaiced again, bilinearly or edge-directed, at the source's own
pattern phase), tone / white balance, in-camera sharpening, JPEG / double JPEG at its own quality
and 8x8 grid phase, resampling. Manipulations:

* ``splicing``   -- a region from another photo (own view, own camera history); when the region
  is a photo cut-out it is pasted with the cut-out's own soft alpha; other splices may have a
  feathered selection edge;
* ``copy-move``  -- a region of the current image moved elsewhere (optionally scaled, rotated,
  flipped), then locally processed; a segment-shaped copy-move moves a real segment of the
  host (the object at its source keeps its outline at the destination);
* ``removal``    -- the region is inpainted (multiscale push-pull diffusion fill, optionally with
  high-frequency texture borrowed from a nearby area) and re-noised;
* ``generative`` -- the region is re-synthesised: low-passed content (down/up-sampling by k), the
  original detail scaled by ``1 - strength`` plus synthetic correlated texture scaled by
  ``strength``, colour drift and an optional faint periodic (upsampling-like) pattern;
* ``retouch``    -- the region's own content processed locally (blur, sharpen, median, tone).

Region shapes: geometric (polygon, ellipse, blob, rectangle), ``cutout`` (the alpha of a photo
cut-out of the installed pool, :attr:`PhotoPool.cutouts`; skipped when none is installed) and
``segment`` (a segment, or a union of neighbouring segments, of a Felzenszwalb or SLIC
over-segmentation of the host view, so that the outline follows edges of the image). The share of
each depends on the manipulation (:data:`OBJECT_SHARE`).

Every sample then gets a global post-processing chain, authentic samples included, so
"processed" never means "forged": none, basic (light JPEG / down-up resampling / noise / blur),
``social`` (as a social network shares it: an earlier JPEG, a downscale to a long side of at most
:data:`SOCIAL_MAX_SIDE` when larger -- the masks follow -- mild sharpening, JPEG q 70-85 4:2:0)
or ``double-jpeg`` (two whole-image JPEGs, the first possibly at a shifted grid).

Conventions: images are ``H x W x 3`` uint8 RGB; ``sources`` is an ``H x W`` uint8 index mask,
``0`` = the largest source (always the host), ``1..K-1`` the others by decreasing area. A pixel's
label is the last source painted on it *before* the global post-processing (which may blend
values across boundaries by a pixel or two; soft cut-out alphas and feathered edges count from
alpha 0.5). Output is a deterministic function of ``(seed, index, num_sources, size_range, photo
pool, difficulty)``: samples can be generated in any order or in parallel. Every random draw
comes from ``_rng(seed, index, stream)``, one stream per purpose (see ``_S_*``). Pillow's JPEG
codec is part of the pipeline, so byte-identity across machines also needs the same libjpeg
build.

CLI: ``python -m training.synth --out DIR --n N [--sources 1-4] ...`` writes the layout of
``docs/dataset-format.md``.

Modules (``training.synth`` re-exports the public names; a module-level constant is read where
it is defined, so patch it there, e.g. ``training.synth_post.SOCIAL_MAX_SIDE``):
``synth_common`` (streams, :data:`MANIPULATIONS`, :class:`Sample`), ``synth_ops`` (pixel
operations, CFA, JPEG, history interpreter, push-pull fill), ``synth_camera`` (processing
histories, trace heuristic), ``synth_post`` (global post-processing chains), ``synth_segments``
(host over-segmentation, object moves), ``synth_shapes`` (region shapes, cut-outs, layout),
``synth_plan`` (source plans), ``synth_render`` (photo views, rendering of the foreign sources),
``synth_fill`` / ``synth_recolour`` (the held-out families), ``synth_generate``
(:func:`generate_sample`), ``synth_dataset`` (:func:`write_dataset`), ``synth_cli`` (the command
line) and ``synth_reader`` (samples generated on demand for training).
"""

from __future__ import annotations

import sys

from training.synth_cli import build_parser, main, parse_manipulations
from training.synth_common import (
    DIFFICULTIES,
    HELD_OUT_MANIPULATIONS,
    MANIPULATIONS,
    SYNTH_VERSION,
    Sample,
    _rng,
    sample_name,
)
from training.synth_dataset import choose_num_sources, write_dataset, write_sample
from training.synth_generate import generate_sample
from training.synth_ops import _cfa
from training.synth_post import SOCIAL_MAX_SIDE
from training.synth_segments import _Segments
from training.synth_shapes import OBJECT_SHARE, SHAPES

__all__ = [
    "Sample",
    "generate_sample",
    "sample_name",
    "choose_num_sources",
    "write_dataset",
    "main",
    "MANIPULATIONS",
    "HELD_OUT_MANIPULATIONS",
    "parse_manipulations",
    "OBJECT_SHARE",
    "SOCIAL_MAX_SIDE",
    "SYNTH_VERSION",
]

# also importable from here, as before the split: the shapes, difficulties, the dataset and
# command-line helpers, and the internals the tests reach (random streams, segments, CFA)
_REEXPORTED = (SHAPES, DIFFICULTIES, write_sample, build_parser, _rng, _Segments, _cfa)


if __name__ == "__main__":
    sys.exit(main())
