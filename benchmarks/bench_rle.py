"""Benchmark ml_backend.rle against label-studio-sdk's brush codec.

    python benchmarks/bench_rle.py [--repeats 15] [--sizes 512x512,1024x768,2048x1536]

Prints, per mask size, the median encode/decode time of our codec and of
``label_studio_sdk.converter.brush`` (``mask2rle`` / ``decode_rle`` + alpha slice) and the
speed-up ratios.  Masks are "realistic" forgery masks: a few smooth blobs (an ellipse plus a
thresholded smoothed random field), cleaned like the backend does before encoding.  The SDK
columns are skipped when label-studio-sdk is not installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ml_backend.rle import clean_mask, decode_rle, encode_rle  # noqa: E402


def realistic_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A few irregular blobs covering roughly 5-20 % of the image."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = 0.15 * height, 0.2 * width
    ellipse = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    small = rng.standard_normal((max(height // 16, 2), max(width // 16, 2)))
    field = ndimage.zoom(ndimage.gaussian_filter(small, 2.0), (height / small.shape[0], width / small.shape[1]), order=1)
    field = field[:height, :width]
    blobs = field > np.quantile(field, 0.93)
    return clean_mask(ellipse | blobs, min_area_fraction=0.0005)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sizes", default="512x512,1024x768,2048x1536", help="WxH list")
    ap.add_argument("--noise", action="store_true", help="add a 512x512 random-noise worst case")
    args = ap.parse_args(argv)

    try:
        from label_studio_sdk.converter import brush
    except ImportError:  # pragma: no cover - optional
        brush = None
        print("label-studio-sdk not installed: SDK columns skipped")

    rows = []
    specs = args.sizes.split(",") + (["512x512:noise"] if args.noise else [])
    for spec in specs:
        dims, _, kind = spec.partition(":")
        w, h = (int(v) for v in dims.lower().split("x"))
        if kind == "noise":
            mask = np.random.default_rng(0).random((h, w)) > 0.5
        else:
            mask = realistic_mask(h, w)
        m255 = mask.astype(np.uint8) * 255
        rle = encode_rle(mask)
        assert np.array_equal(decode_rle(rle, h, w), m255)
        ours_enc = median_ms(lambda: encode_rle(mask), args.repeats)
        ours_dec = median_ms(lambda: decode_rle(rle, h, w), args.repeats)
        row = {"size": f"{w}x{h}" + ("*" if kind else ""), "rle_bytes": len(rle), "ours_enc": ours_enc, "ours_dec": ours_dec}
        if brush is not None:
            assert brush.mask2rle(m255) == rle, "encoders disagree"
            sdk_repeats = max(3, args.repeats // 3)
            row["sdk_enc"] = median_ms(lambda: brush.mask2rle(m255), sdk_repeats)
            row["sdk_dec"] = median_ms(
                lambda: brush.decode_rle(rle).reshape(h, w, 4)[:, :, 3], sdk_repeats
            )
        rows.append(row)

    head = f"{'mask (WxH)':>11} {'RLE ints':>9} {'ours enc':>9} {'ours dec':>9}"
    if brush is not None:
        head += f" {'SDK enc':>9} {'SDK dec':>9} {'enc x':>7} {'dec x':>7}"
    print(head + "   (times: median ms)")
    for r in rows:
        line = f"{r['size']:>11} {r['rle_bytes']:>9} {r['ours_enc']:>9.2f} {r['ours_dec']:>9.2f}"
        if brush is not None:
            line += (
                f" {r['sdk_enc']:>9.2f} {r['sdk_dec']:>9.2f}"
                f" {r['sdk_enc'] / r['ours_enc']:>7.1f} {r['sdk_dec'] / r['ours_dec']:>7.1f}"
            )
        print(line)
    if args.noise:
        print("* random noise (worst case; a cleaned mask never looks like this)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
