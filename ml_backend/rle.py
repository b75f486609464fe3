"""Label Studio brush RLE: a vectorised numpy codec.

Label Studio stores ``BrushLabels`` masks as ``value.rle``: a list of bytes holding a
bit-packed run-length stream (a port of thi.ng ``rle-pack``) over the mask flattened to an
**RGBA** array (H*W*4 values, R = G = B = A = mask value).  The frontend uses the alpha
channel; mask values must be 0/255 (alpha 1 is nearly invisible).

Stream layout (big-endian bits, zero-padded to whole bytes)::

    32 bits  num          number of values (H*W*4)
     5 bits  word_size-1  8 for masks
    4x4 bits rle_sizes-1  field widths of the run lengths; [3, 4, 8, 16] in practice
    then tokens until ``num`` values are produced:
      repeat run:  1, 2-bit size index k, (len-1) in rle_sizes[k] bits, one word
      literals:    0, 2-bit size index k, (cnt-1) in rle_sizes[k] bits, cnt words

This module reproduces ``label_studio_sdk.converter.brush.encode_rle`` / ``mask2rle``
byte for byte (including its quirks: a run of length 1 is a 1-word literal, runs longer
than 256 always use the 16-bit field and are split into chunks of 65536, and the padding
is ``8 - nbits % 8`` bits, i.e. a whole zero byte when the stream is already aligned), and
decodes any valid stream (including multi-word literal tokens as written by thi.ng's
encoder) without per-pixel or per-token Python loops.

Public API: :func:`encode_rle`, :func:`decode_rle`, :func:`encode_rle_flat`,
:func:`decode_rle_flat`, :func:`rle_header`, :func:`clean_mask`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = [
    "RLEHeader",
    "RLEError",
    "clean_mask",
    "decode_rle",
    "decode_rle_flat",
    "encode_rle",
    "encode_rle_flat",
    "rle_header",
]

_HEADER_BITS = 32 + 5 + 16
_WORD_SIZE = 8
_RLE_SIZES = (3, 4, 8, 16)
_MAX_CHUNK = 1 << 16  # longest run one token can hold with a 16-bit length field


class RLEError(ValueError):
    """The RLE stream is malformed or does not match the requested shape."""


class RLEHeader(NamedTuple):
    num: int  # number of decoded values (H*W*4 for a brush mask)
    word_size: int  # bits per value (8 for masks)
    rle_sizes: tuple[int, int, int, int]  # widths of the run-length fields


# ----------------------------------------------------------------------------------------
# encoding
# ----------------------------------------------------------------------------------------


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths and run values of a 1-D array (no Python loop)."""
    n = values.size
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [n])))
    return lengths.astype(np.int64), values[starts]


def _binary_runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths and 0/1 run values of ``flat != 0`` using bit packing.

    The array is packed 64 pixels per word (first pixel in the most significant bit) and
    XOR-ed with itself shifted by one bit, so a set bit marks a pixel that differs from its
    predecessor; only the few non-zero words are unpacked again.  Runs of a binary mask
    alternate, so their values follow from the first pixel.
    """
    n = flat.size
    packed = np.packbits(flat)  # non-zero -> 1
    pad = (-packed.size) % 8
    if pad:
        packed = np.concatenate((packed, np.zeros(pad, dtype=np.uint8)))
    words = packed.view(">u8").astype(np.uint64)
    first = int(packed[0] >> 7)
    carry = np.empty_like(words)
    carry[0] = np.uint64(first) << np.uint64(63)  # no transition at pixel 0
    carry[1:] = (words[:-1] & np.uint64(1)) << np.uint64(63)
    trans = words ^ ((words >> np.uint64(1)) | carry)
    nz = np.flatnonzero(trans != 0)  # (np.nonzero is much faster on bool arrays)
    bits = np.unpackbits(trans[nz].astype(">u8").view(np.uint8))
    hit = np.flatnonzero(bits.view(np.bool_))
    pos = nz[hit >> 6].astype(np.int64) * 64 + (hit & 63)
    pos = pos[pos < n]  # padding can add a transition after the last pixel
    lengths = np.diff(np.concatenate(([0], pos, [n])))
    values = (np.arange(lengths.size, dtype=np.int64) + first) & 1
    return lengths, values


_IDX_THRESHOLDS = np.array([8, 16, 256], dtype=np.int64)


def _encode_runs(lengths: np.ndarray, values: np.ndarray, num: int) -> list[int]:
    """Encode runs exactly like label-studio-sdk's ``encode_rle`` (word size 8).

    Token per run (SDK branches): length 1 -> literal ``0 00 000 v``; 2..8 -> ``1 00 +3 bits``;
    9..16 -> ``1 01 +4 bits``; 17..256 -> ``1 10 +8 bits``; longer -> ``1 11 +16 bits``, split
    into chunks of 65536 while more than 65536 remain (the remainder keeps the 16-bit field
    even when short).  Every token ends with the 8-bit value.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    idx = np.searchsorted(_IDX_THRESHOLDS, lengths)  # 0..3 = size index of each run
    extra = np.where(lengths > _MAX_CHUNK, (lengths - 1) // _MAX_CHUNK, 0)
    if extra.any():
        reps = extra + 1
        tok_len = np.repeat(lengths, reps)
        tok_val = np.repeat(values, reps)
        idx = np.repeat(idx, reps)
        # position of each token inside its run's chunk list; all but the last are 65536
        first = np.cumsum(reps) - reps
        k = np.arange(tok_len.size) - np.repeat(first, reps)
        n_extra = np.repeat(extra, reps)
        tok_len = np.where(k == n_extra, tok_len - n_extra * _MAX_CHUNK, _MAX_CHUNK)
    else:
        tok_len, tok_val = lengths, values
    field_bits = np.asarray(_RLE_SIZES, dtype=np.int64)[idx]
    code = (
        ((tok_len > 1).astype(np.int64) << (10 + field_bits))  # 1 = repeat, 0 = literal
        | (idx << (8 + field_bits))
        | ((tok_len - 1) << 8)
        | (tok_val & 0xFF)
    )
    nbits = 11 + field_bits

    # The 53-bit header goes in as two pseudo-tokens (32 + 21 bits), the padding as a third:
    # the SDK always pads 8 - nbits % 8 bits, i.e. a whole zero byte when already aligned.
    rest = (_WORD_SIZE - 1) << 16
    for i, size in enumerate(_RLE_SIZES):
        rest |= (size - 1) << (12 - 4 * i)
    total = _HEADER_BITS + int(nbits.sum())
    pad = 8 - total % 8
    code = np.concatenate(([num, rest], code, [0]))
    nbits = np.concatenate(([32, 21], nbits, [pad]))

    # Left-align each code in a big-endian 32-bit slot, unpack to a (T, 32) bit matrix and
    # keep the first nbits of every row: row-major selection concatenates the codes.
    slots = (code << (32 - nbits)).astype(">u4")
    bits = np.unpackbits(slots.view(np.uint8)).reshape(-1, 32)
    keep = np.arange(32)[None, :] < nbits[:, None]
    return np.packbits(bits[keep]).tolist()


def encode_rle_flat(values: Sequence[int] | np.ndarray) -> list[int]:
    """Encode a flat array of 8-bit values (e.g. an RGBA-flattened mask) to LS RLE.

    Same output as ``label_studio_sdk.converter.brush.encode_rle(values)``.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"encode_rle_flat expects a 1-D array, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("values must fit in 8 bits (0..255)")
    if arr.size >= 1 << 32:
        raise ValueError("too many values for the 32-bit RLE header")
    if arr.size == 0:
        return _encode_runs(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    lengths, vals = _runs(arr)
    return _encode_runs(lengths, vals, arr.size)


def encode_rle(mask: np.ndarray, binarize: bool = True) -> list[int]:
    """Encode an HxW mask as Label Studio brush RLE (``value.rle`` of a brushlabels region).

    With ``binarize=True`` (default) any non-zero/True pixel becomes 255 and the rest 0, so
    bool, 0/1 and 0/255 masks all give the visible 0/255 mask that
    ``brush.mask2rle(mask.astype(np.uint8) * 255)`` produces.  With ``binarize=False`` the
    uint8 values are encoded as they are (identical to ``brush.mask2rle(mask)``).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    num = m.size * 4
    if num >= 1 << 32:
        raise ValueError("mask too large for the 32-bit RLE header")
    if m.size == 0:
        return _encode_runs(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    # Runs of the RGBA-repeated array are the pixel runs with 4x the length, so the 4x
    # array is never materialised.
    if binarize:
        flat = m.ravel()
        if not (flat.dtype == np.bool_ or np.issubdtype(flat.dtype, np.integer)):
            flat = flat != 0
        lengths, vals = _binary_runs(flat)
        vals = vals * 255
    else:
        if m.dtype == np.bool_:
            raise ValueError("binarize=False needs integer values, got a bool mask")
        if m.min() < 0 or m.max() > 255:
            raise ValueError("mask values must be in 0..255")
        lengths, vals = _runs(m.ravel())
    return _encode_runs(lengths * 4, vals, num)


# ----------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------


def _as_bytes(rle: Sequence[int] | np.ndarray | bytes) -> np.ndarray:
    if isinstance(rle, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(rle), dtype=np.uint8)
    arr = np.asarray(rle)
    if arr.ndim != 1:
        raise RLEError("rle must be a flat list of byte values")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise RLEError(f"rle must contain integers, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise RLEError("rle values must be bytes (0..255)")
    return arr.astype(np.uint8)


def _bit_windows(data: np.ndarray, nbits: int) -> np.ndarray:
    """``W[p]`` = the 24 bits starting at bit ``p`` (zero beyond the end), for p < nbits."""
    padded = np.concatenate((data, np.zeros(4, dtype=np.uint8))).astype(np.uint32)
    nb = data.size
    # big-endian 32-bit word starting at every byte
    word = (padded[:nb] << 24) | (padded[1 : nb + 1] << 16) | (padded[2 : nb + 2] << 8) | padded[3 : nb + 3]
    # bit p = 8*b + r lives at offset r in word[b]; the 24-bit window is (word >> (8 - r))
    win = (word[:, None] >> (8 - np.arange(8, dtype=np.uint32))[None, :]) & 0xFFFFFF
    return win.ravel()[:nbits]


def rle_header(rle: Sequence[int] | np.ndarray | bytes) -> RLEHeader:
    """Parse the 53-bit header (value count, word size, run-length field widths)."""
    data = _as_bytes(rle)
    if data.size < 7:
        raise RLEError(f"rle too short for a header ({data.size} bytes)")
    h = int.from_bytes(data[:7].tobytes(), "big") >> (56 - _HEADER_BITS)
    num = h >> 21
    word_size = ((h >> 16) & 0x1F) + 1
    sizes = tuple(((h >> (12 - 4 * i)) & 0xF) + 1 for i in range(4))
    return RLEHeader(num, word_size, sizes)  # type: ignore[arg-type]


def _parse_tokens(data: np.ndarray) -> tuple[RLEHeader, np.ndarray, np.ndarray]:
    """Parse a stream into words and how many times each word is emitted.

    Token boundaries depend on the content, so the parse computes, for every bit position,
    where a token starting there would end (``next``), then follows that chain from the
    first token by pointer doubling: O(bits * log(tokens)) numpy work and no Python loop
    per token or per pixel.  Returns ``(header, word_values, emit_counts)``; the emitted
    values are ``np.repeat(word_values, emit_counts)[:header.num]``.
    """
    hdr = rle_header(data)
    num, word_size, sizes = hdr
    if word_size > 16:
        raise RLEError(f"word size {word_size} not supported (masks use 8)")
    if num == 0:
        return hdr, np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_body = data.size * 8 - _HEADER_BITS
    if n_body <= 0:
        raise RLEError("rle has a header but no runs")
    win = _bit_windows(data, data.size * 8)[_HEADER_BITS:]  # 24-bit window at each body bit
    win_i = win.astype(np.intp)  # (intp indices make numpy's gathers fastest)

    flag = (win_i >> 23) & 1
    idx = (win_i >> 21) & 3
    field_bits = np.take(np.asarray(sizes, dtype=np.intp), idx)
    count = ((win_i >> (21 - field_bits)) & ((1 << field_bits) - 1)) + 1
    words = np.where(flag == 1, 1, count)
    tok_bits = field_bits + 3 + words * word_size

    # next[p]: start of the following token; everything past the end goes to a sentinel.
    end = n_body
    nxt = np.empty(n_body + 1, dtype=np.intp)
    np.minimum(np.arange(n_body, dtype=np.intp) + tok_bits, end, out=nxt[:n_body])
    nxt[n_body] = end

    # Pointer doubling: ``starts`` holds the starts of tokens 0 .. 2^k - 1 and ``jump`` is
    # next applied 2^k times.
    starts = np.zeros(1, dtype=np.intp)
    jump = nxt
    while True:
        starts = np.concatenate((starts, np.take(jump, starts)))
        if starts[-1] == end:
            break
        jump = np.take(jump, jump)
    starts = starts[starts < end]

    t_flag = flag[starts]
    t_count = count[starts]
    payload = starts + 3 + field_bits[starts]  # bit offset of each token's first word

    # Stop at the token that completes ``num`` values (trailing padding may look like tokens).
    produced_before = np.cumsum(t_count) - t_count
    live = produced_before < num
    t_flag, t_count, payload = t_flag[live], t_count[live], payload[live]
    words_per_tok = np.where(t_flag == 1, 1, t_count)
    if payload.size == 0 or payload[-1] + word_size * words_per_tok[-1] > n_body:
        raise RLEError("rle stream is truncated")
    if int(t_count.sum()) < num:
        raise RLEError(f"rle decodes to {int(t_count.sum())} values, header says {num}")

    # Word positions: repeat tokens hold one word, literal tokens ``count`` words.
    first_word = np.cumsum(words_per_tok) - words_per_tok
    k = np.arange(int(words_per_tok.sum()), dtype=np.int64) - np.repeat(first_word, words_per_tok)
    word_pos = np.repeat(payload, words_per_tok) + k * word_size
    word_vals = (win[word_pos] >> (24 - word_size)).astype(np.int64) & ((1 << word_size) - 1)
    # Each word is emitted ``count`` times (repeat token) or once (literal token).
    emit = np.repeat(np.where(t_flag == 1, t_count, 1), words_per_tok)
    return hdr, word_vals, emit


def decode_rle_flat(rle: Sequence[int] | np.ndarray | bytes) -> np.ndarray:
    """Decode LS RLE to the flat value array, like ``brush.decode_rle`` (vectorised)."""
    data = _as_bytes(rle)
    hdr, vals, emit = _parse_tokens(data)
    dtype = np.uint8 if hdr.word_size <= 8 else np.uint16
    return np.repeat(vals.astype(dtype), emit)[: hdr.num]


def decode_rle(rle: Sequence[int] | np.ndarray | bytes, height: int, width: int) -> np.ndarray:
    """Decode a brush RLE to an ``(height, width)`` uint8 mask (the alpha channel, 0/255).

    Equivalent to ``brush.decode_rle(rle).reshape(height, width, 4)[:, :, 3]``, without
    materialising the RGBA array.  Raises :class:`RLEError` when the value count in the
    header is not ``height * width * 4``.
    """
    height, width = int(height), int(width)
    data = _as_bytes(rle)
    hdr = rle_header(data)
    if hdr.num != height * width * 4:
        raise RLEError(
            f"rle holds {hdr.num} values but {height}x{width}x4 = {height * width * 4} expected"
        )
    if hdr.word_size > 8:
        raise RLEError(f"brush masks use 8-bit words, got {hdr.word_size}")
    _, vals, emit = _parse_tokens(data)
    # A group of emitted values covering flat indices [s, e) holds the alpha values
    # (index 4k + 3) of pixels s//4 .. e//4 - 1.
    ends = np.minimum(np.cumsum(emit), hdr.num)
    starts = np.concatenate(([0], ends[:-1]))
    alpha = np.repeat(vals.astype(np.uint8), ends // 4 - starts // 4)
    return alpha.reshape(height, width)


# ----------------------------------------------------------------------------------------
# mask cleaning
# ----------------------------------------------------------------------------------------


def clean_mask(
    mask: np.ndarray,
    min_area_fraction: float = 0.0005,
    min_pixels: int | None = None,
    fill_holes: bool = True,
    max_hole_fraction: float | None = None,
    max_hole_pixels: int | None = None,
) -> np.ndarray:
    """Remove specks and fill small holes of a binary mask before encoding it.

    - Foreground components (8-connected) smaller than
      ``max(min_pixels, ceil(min_area_fraction * H * W))`` pixels are removed.
    - With ``fill_holes``, background components (4-connected) that do not touch the image
      border and are no larger than the hole limit are filled.  The hole limit is
      ``max(max_hole_pixels, ceil(max_hole_fraction * H * W))`` if either is given, else the
      speck limit.  Pass ``max_hole_fraction=1.0`` to fill every enclosed hole.

    Returns a bool array of the same shape.  Fewer components mean far shorter RLE payloads.
    """
    from scipy import ndimage

    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    if min_area_fraction is not None and not (0 <= min_area_fraction <= 1):
        raise ValueError("min_area_fraction must be within [0, 1]")
    total = m.size
    speck = int(np.ceil((min_area_fraction or 0.0) * total))
    if min_pixels is not None:
        speck = max(speck, int(min_pixels))

    out = m
    if speck > 1 and out.any():
        labels, n = ndimage.label(out, structure=np.ones((3, 3), dtype=bool))
        if n:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            keep = sizes >= speck
            keep[0] = False
            out = keep[labels]

    if fill_holes and out.any() and not out.all():
        if max_hole_fraction is None and max_hole_pixels is None:
            hole_limit = speck
        else:
            hole_limit = int(np.ceil((max_hole_fraction or 0.0) * total))
            if max_hole_pixels is not None:
                hole_limit = max(hole_limit, int(max_hole_pixels))
        if hole_limit > 0:
            bg_labels, n = ndimage.label(~out)  # 4-connected background
            if n:
                sizes = np.bincount(bg_labels.ravel(), minlength=n + 1)
                border = np.unique(
                    np.concatenate(
                        (bg_labels[0], bg_labels[-1], bg_labels[:, 0], bg_labels[:, -1])
                    )
                )
                fill = sizes <= hole_limit
                fill[0] = False
                fill[border] = False
                if fill.any():
                    out = out | fill[bg_labels]
    return out
