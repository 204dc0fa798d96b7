"""Tests for sophia_jax.data.images (InternVL dynamic tiling).

Two references are used:

* ``_reference_*`` below: the original InternVL ``dynamic_preprocess`` / ``load_image`` algorithm re-stated in the
  test (set of grids sorted by tile count, closest ratio with the area tie-break, PIL bicubic resize, row-major
  crops, thumbnail last), followed by torchvision's ``ToTensor`` + ``Normalize`` arithmetic done with torch ops
  (torchvision itself is not installable here).
* transformers' ``GotOcr2ImageProcessorPil`` (the PIL/numpy backend of the GotOcr2 / InternVL-hf processor, which
  needs no torchvision) configured like InternVL: crop_to_patches, min/max patches 1/12, ImageNet mean/std,
  BICUBIC. Its grid function ``get_optimal_tiled_canvas`` is compared over a sweep of sizes.

Measured parity: bit-exact (max abs difference 0.0 in float32) against both references.
"""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from sophia_jax.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageError,
    TileBudgetError,
    TilingConfig,
    candidate_grids,
    choose_grid,
    load_image,
    num_tiles_for_size,
    open_image,
    pad_tiles,
    tile_image,
)

try:  # transformers >= 5: PIL backend of the GotOcr2 image processor
    from transformers.models.got_ocr2 import image_processing_pil_got_ocr2 as hf_got_ocr2
except Exception:  # pragma: no cover - depends on the transformers version
    hf_got_ocr2 = None

needs_hf = pytest.mark.skipif(hf_got_ocr2 is None, reason="transformers GotOcr2ImageProcessorPil unavailable")


# ----------------------------------------------------------------------------------------------------------------
# Reference: the original InternVL algorithm, stated independently of the module under test
# ----------------------------------------------------------------------------------------------------------------


def _reference_grids(lo: int, hi: int) -> list[tuple[int, int]]:
    # Exactly as InternVL: set(...) over n, i, j, then sorted by i*j (stable).
    grids = set(
        (i, j) for n in range(lo, hi + 1) for i in range(1, n + 1) for j in range(1, n + 1) if lo <= i * j <= hi
    )
    return sorted(grids, key=lambda g: g[0] * g[1])


def _reference_grid(width: int, height: int, lo: int, hi: int, tile: int) -> tuple[int, int]:
    ratio = width / height
    best_diff, best = float("inf"), (1, 1)
    for g in _reference_grids(lo, hi):
        d = abs(ratio - g[0] / g[1])
        if d < best_diff:
            best_diff, best = d, g
        elif d == best_diff:
            if width * height > 0.5 * tile * tile * g[0] * g[1]:
                best = g
    return best


def _reference_tiles(img: Image.Image, lo: int, hi: int, tile: int, thumb: bool) -> np.ndarray:
    import torch

    img = img.convert("RGB")
    cols, rows = _reference_grid(img.size[0], img.size[1], lo, hi, tile)
    big = img.resize((tile * cols, tile * rows))  # PIL default resample (BICUBIC for RGB)
    pieces = []
    for k in range(cols * rows):
        x, y = (k % cols) * tile, (k // cols) * tile
        pieces.append(big.crop((x, y, x + tile, y + tile)))
    if thumb and len(pieces) != 1:
        pieces.append(img.resize((tile, tile)))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    outs = []
    for p in pieces:
        # torchvision ToTensor: HWC uint8 -> CHW float32 / 255; Normalize: (x - mean) / std
        t = torch.from_numpy(np.array(p, dtype=np.uint8)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        outs.append(t.sub(mean).div(std).numpy())
    return np.stack(outs)


def _hf_processor(tile: int, lo: int = 1, hi: int = 12):
    return hf_got_ocr2.GotOcr2ImageProcessorPil(
        crop_to_patches=True,
        min_patches=lo,
        max_patches=hi,
        size={"height": tile, "width": tile},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_rescale=True,
        do_normalize=True,
        resample=Image.Resampling.BICUBIC,
    )


def _random_image(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth-ish content plus noise, so resampling errors would show up
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256], -1)
    arr = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return img if mode == "RGB" else img.convert(mode)


SIZES = [
    (300, 100),  # wide
    (100, 300),  # tall
    (200, 200),  # square
    (10, 300),  # tiny and very tall
    (300, 10),  # tiny and very wide
    (637, 211),  # odd sizes
    (1001, 777),
    (1, 1),
]


# ----------------------------------------------------------------------------------------------------------------
# Grid choice
# ----------------------------------------------------------------------------------------------------------------


def test_candidate_grids_match_internvl_order():
    for lo, hi in [(1, 12), (1, 6), (2, 12), (4, 4), (6, 7), (1, 40)]:
        assert list(candidate_grids(lo, hi)) == _reference_grids(lo, hi)
    # Pin the order for the default config so a change in CPython's set layout would be noticed.
    assert candidate_grids(1, 12) == (
        (1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6), (6, 1),
        (3, 2), (2, 3), (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9), (3, 3), (9, 1), (2, 5),
        (5, 2), (10, 1), (1, 10), (11, 1), (1, 11), (12, 1), (3, 4), (4, 3), (1, 12), (6, 2), (2, 6),
    )  # fmt: skip


def _sweep_sizes():
    sizes = set()
    for w in range(1, 2400, 53):
        for h in range(1, 2400, 61):
            sizes.add((w, h))
    # exact grid ratios (ties between (1,1), (2,2), (3,3)...) at small and large areas, around the area threshold
    for c in range(1, 13):
        for r in range(1, 13):
            for k in (1, 3, 17, 100, 158, 159, 160, 317, 448):
                sizes.add((c * k, r * k))
    # exact midpoints between grid ratios (ties between different grids)
    ratios = sorted({Fraction(c, r) for c in range(1, 13) for r in range(1, 13) if c * r <= 12})
    for a, b in zip(ratios, ratios[1:]):
        m = (a + b) / 2
        for k in (1, 7, 60, 400):
            sizes.add((m.numerator * k, m.denominator * k))
    return sorted(sizes)


SWEEP = _sweep_sizes()


def test_grid_sweep_matches_reference_all_configs():
    tile = 448
    configs = [(1, 12), (1, 6), (1, 1), (1, 24), (2, 12), (4, 4), (6, 7)]
    n = 0
    for lo, hi in configs:
        cfg = TilingConfig(tile_size=tile, min_tiles=lo, max_tiles=hi)
        for w, h in SWEEP[::3] if (lo, hi) != (1, 12) else SWEEP:
            assert choose_grid(w, h, cfg) == _reference_grid(w, h, lo, hi, tile), (w, h, lo, hi)
            n += 1
    assert n > 5000


@needs_hf
@pytest.mark.parametrize("lo,hi,tile", [(1, 12, 448), (1, 6, 448), (1, 12, 56), (1, 24, 448), (1, 1, 448)])
def test_grid_sweep_matches_transformers_for_min_tiles_1(lo, hi, tile):
    hf_grid = hf_got_ocr2.get_optimal_tiled_canvas
    cfg = TilingConfig(tile_size=tile, min_tiles=lo, max_tiles=hi)
    for w, h in SWEEP:
        assert choose_grid(w, h, cfg) == tuple(hf_grid((h, w), (tile, tile), lo, hi)), (w, h)
    assert len(SWEEP) > 3000


def test_equal_count_order_only_matters_when_min_tiles_above_1():
    """Why we can follow InternVL's set order and still agree with transformers for min_tiles == 1.

    Two grids with the same tile count can only decide the result if they are jointly closest to the image ratio.
    Exhaustively (exact rationals), that never happens for min_tiles == 1, but does for some min_tiles > 1.
    """

    def joint_ties(lo, hi):
        grids = [(c, r) for c in range(1, hi + 1) for r in range(1, hi + 1) if lo <= c * r <= hi]
        found = []
        for a in grids:
            for b in grids:
                if a < b and a[0] * a[1] == b[0] * b[1]:
                    mid = (Fraction(*a) + Fraction(*b)) / 2
                    d = abs(mid - Fraction(*a))
                    if all(abs(mid - Fraction(*g)) >= d for g in grids):
                        found.append((a, b))
        return found

    for hi in range(1, 25):
        assert joint_ties(1, hi) == []
    assert joint_ties(4, 4) == [((1, 4), (2, 2)), ((2, 2), (4, 1))]
    # ...and there we follow the original InternVL (set order), e.g. 250x100 with min=max=4:
    cfg = TilingConfig(min_tiles=4, max_tiles=4)
    assert choose_grid(250, 100, cfg) == _reference_grid(250, 100, 4, 4, 448) == (4, 1)
    assert choose_grid(2000, 800, cfg) == _reference_grid(2000, 800, 4, 4, 448) == (2, 2)


def test_tie_break_prefers_more_tiles_only_for_large_images():
    cfg = TilingConfig(tile_size=448)
    # square images tie between (1,1), (2,2), (3,3): later grid wins only if area > 0.5 * 448^2 * n
    assert choose_grid(448, 448, cfg) == (1, 1)  # 200704 > 0.5 * 448**2 * 4 is false
    assert choose_grid(800, 800, cfg) == (2, 2)  # 640000 > 401408, but not > 903168 (3x3)
    assert choose_grid(2000, 2000, cfg) == (3, 3)
    assert choose_grid(2000, 1000, cfg) == (4, 2)  # ratio 2: (2,1) -> (4,2) (2e6 > 0.5*448**2*8); (6,3) is 18 > 12
    assert choose_grid(500, 250, cfg) == (2, 1)


def test_num_tiles_for_size():
    cfg = TilingConfig(tile_size=56)
    for w, h in SIZES:
        assert num_tiles_for_size(w, h, cfg) == tile_image(_random_image(w, h), cfg).shape[0]
    assert num_tiles_for_size(10, 10, cfg) == 1  # single tile: no thumbnail
    assert num_tiles_for_size(300, 100, TilingConfig(tile_size=56, use_thumbnail=False)) == 12


# ----------------------------------------------------------------------------------------------------------------
# Pixel parity
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [56, 112])
@pytest.mark.parametrize("size", SIZES)
def test_tiles_match_internvl_reference(tile, size):
    img = _random_image(*size, seed=size[0] * 7 + size[1])
    cfg = TilingConfig(tile_size=tile)
    got = tile_image(img, cfg)
    want = _reference_tiles(img, 1, 12, tile, thumb=True)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert got.shape[1:] == (3, tile, tile)
    np.testing.assert_array_equal(got, want)  # bit-exact


@needs_hf
@pytest.mark.parametrize("tile", [56, 112])
@pytest.mark.parametrize("size", SIZES)
def test_tiles_match_transformers_pil_processor(tile, size):
    img = _random_image(*size, seed=size[0] + 3 * size[1])
    got = tile_image(img, TilingConfig(tile_size=tile))
    out = _hf_processor(tile)(img, return_tensors="np")
    want = np.asarray(out["pixel_values"])
    assert list(out["num_patches"]) == [got.shape[0]]
    assert want.shape == got.shape
    assert np.abs(got - want).max() == 0.0  # measured: exact in float32


@needs_hf
def test_full_size_448_parity_with_transformers():
    img = _random_image(1801, 903, seed=5)
    got = tile_image(img)
    want = np.asarray(_hf_processor(448)(img, return_tensors="np")["pixel_values"])
    assert got.shape == want.shape == (9, 3, 448, 448)  # (4, 2) grid + thumbnail
    assert np.abs(got - want).max() == 0.0


def test_layout_row_major_and_thumbnail_last():
    # An image made of 6 flat colour blocks (3 cols x 2 rows) at exactly the tiled size: each tile is one colour.
    tile = 16
    colours = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40 + 10
    arr = np.repeat(np.repeat(colours, tile, axis=0), tile, axis=1)
    arr = np.stack([arr, arr, arr], -1)
    cfg = TilingConfig(tile_size=tile, max_tiles=6)
    tiles = tile_image(arr, cfg)
    assert tiles.shape == (7, 3, tile, tile)
    expected = ((colours.reshape(-1).astype(np.float32) / 255) - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    np.testing.assert_allclose(tiles[:6, 0, 8, 8], expected, rtol=0, atol=1e-6)
    thumb = np.asarray(Image.fromarray(arr).resize((tile, tile), Image.Resampling.BICUBIC))
    want_thumb = (thumb.transpose(2, 0, 1).astype(np.float32) / 255 - np.float32(IMAGENET_MEAN).reshape(3, 1, 1)) / (
        np.float32(IMAGENET_STD).reshape(3, 1, 1)
    )
    np.testing.assert_allclose(tiles[6], want_thumb, rtol=0, atol=1e-6)
    no_thumb = tile_image(arr, TilingConfig(tile_size=tile, max_tiles=6, use_thumbnail=False))
    np.testing.assert_array_equal(no_thumb, tiles[:6])


def test_numpy_input_equals_pil_input():
    img = _random_image(90, 40)
    cfg = TilingConfig(tile_size=28)
    np.testing.assert_array_equal(tile_image(np.asarray(img), cfg), tile_image(img, cfg))
    gray = img.convert("L")
    np.testing.assert_array_equal(tile_image(np.asarray(gray), cfg), tile_image(gray, cfg))
    np.testing.assert_array_equal(tile_image(np.asarray(gray)[:, :, None], cfg), tile_image(gray, cfg))


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "CMYK", "1", "I"])
def test_colour_modes_follow_pil_convert_rgb(mode):
    img = _random_image(70, 50, mode=mode)
    cfg = TilingConfig(tile_size=28)
    got = tile_image(img, cfg)
    np.testing.assert_array_equal(got, _reference_tiles(img, 1, 12, 28, thumb=True))
    np.testing.assert_array_equal(got, tile_image(img.convert("RGB"), cfg))


def test_alpha_is_dropped_not_composited():
    arr = np.zeros((20, 20, 4), np.uint8)
    arr[..., 0] = 200  # red, fully transparent: the original keeps the red, white compositing would not
    got = tile_image(Image.fromarray(arr, "RGBA"), TilingConfig(tile_size=20))
    assert got.shape == (1, 3, 20, 20)
    np.testing.assert_allclose(got[0, 0], (200 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], atol=1e-6)
    np.testing.assert_array_equal(got, tile_image(arr, TilingConfig(tile_size=20)))


def test_exif_orientation_not_applied(tmp_path):
    img = _random_image(60, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    cfg = TilingConfig(tile_size=28)
    tiles = load_image(path, cfg)
    with Image.open(path) as raw:
        assert raw.getexif().get(0x0112) == 6
        np.testing.assert_array_equal(tiles, tile_image(raw.convert("RGB"), cfg))  # stored (unrotated) pixels
    assert choose_grid(60, 30, cfg) == (2, 1)


def test_tiling_config_validation():
    with pytest.raises(ValueError):
        TilingConfig(min_tiles=0)
    with pytest.raises(ValueError):
        TilingConfig(min_tiles=5, max_tiles=4)
    with pytest.raises(ValueError):
        TilingConfig(tile_size=0)
    assert TilingConfig().max_tiles_per_image == 13
    assert TilingConfig(max_tiles=1).max_tiles_per_image == 1
    assert TilingConfig(use_thumbnail=False).max_tiles_per_image == 12


# ----------------------------------------------------------------------------------------------------------------
# Loading and bad inputs
# ----------------------------------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_load_image_path_and_bytes(tmp_path):
    img = _random_image(120, 50)
    data = _encode(img, "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    cfg = TilingConfig(tile_size=28)
    want = tile_image(img, cfg)
    np.testing.assert_array_equal(load_image(path, cfg), want)
    np.testing.assert_array_equal(load_image(str(path), cfg), want)
    np.testing.assert_array_equal(load_image(data, cfg), want)
    assert open_image(data).mode == "RGB"


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="not found") as ei:
        load_image(missing)
    assert str(missing) in str(ei.value)
    assert isinstance(ei.value, ValueError)
    with pytest.raises(ImageError, match=str(tmp_path)):
        load_image(tmp_path)  # a directory


def test_empty_and_corrupt_bytes(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png"):
        load_image(empty)
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(b"this is not an image at all" * 3, name="row 7")
    with pytest.raises(ImageError, match="row 7"):
        load_image(b"this is not an image at all", name="row 7")
    # PNG with a damaged IDAT chunk (CRC mismatch)
    png = bytearray(_encode(_random_image(40, 40), "PNG"))
    png[len(png) // 2] ^= 0xFF
    with pytest.raises(ImageError, match="corrupt|truncated"):
        load_image(bytes(png))


@pytest.mark.parametrize("fmt,tail", [("PNG", 12), ("JPEG", 2)])
def test_truncated_images(tmp_path, fmt, tail):
    data = _encode(_random_image(64, 48), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as ei:
        load_image(path)
    assert path.name in str(ei.value)
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[:-tail])  # only the end marker (PNG IEND chunk / JPEG EOI) missing


def test_zero_size_images():
    with pytest.raises(ImageError, match="zero size"):
        tile_image(Image.new("RGB", (0, 0)))
    with pytest.raises(ImageError, match="zero size"):
        tile_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="zero size"):
        choose_grid(0, 10)

    # A PNG whose header declares 0x0 pixels (Pillow refuses to identify it).
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    zero_png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError, match="zero.png"):
        load_image(zero_png, name="zero.png")


def test_bad_array_inputs():
    with pytest.raises(ImageError, match="uint8"):
        tile_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError, match="shape"):
        tile_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError):
        tile_image("not an image")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# pad_tiles
# ----------------------------------------------------------------------------------------------------------------


def test_pad_tiles_concatenates_pads_and_masks():
    cfg = TilingConfig(tile_size=14)
    a = tile_image(_random_image(60, 20, seed=1), cfg)  # wide: several tiles + thumbnail
    b = tile_image(_random_image(10, 10, seed=2), cfg)  # one tile
    pv, mask, counts = pad_tiles([a, b], budget=20)
    assert counts == [a.shape[0], 1]
    n = a.shape[0] + 1
    assert pv.shape == (20, 3, 14, 14) and pv.dtype == np.float32
    assert mask.dtype == np.bool_ and mask.shape == (20,)
    assert mask[:n].all() and not mask[n:].any()
    np.testing.assert_array_equal(pv[: a.shape[0]], a)
    np.testing.assert_array_equal(pv[a.shape[0]], b[0])
    assert not pv[n:].any()
    # exactly at the budget
    pv2, mask2, _ = pad_tiles([a, b], budget=n)
    assert pv2.shape[0] == n and mask2.all()


def test_pad_tiles_errors_and_empty():
    t = np.ones((5, 3, 8, 8), np.float32)
    with pytest.raises(TileBudgetError, match="10 tiles .* budget of 9"):
        pad_tiles([t, t], budget=9)
    with pytest.raises(ValueError, match="differs"):
        pad_tiles([t, np.ones((1, 3, 4, 4), np.float32)], budget=10)
    with pytest.raises(ValueError, match=r"\[n, 3, H, W\]"):
        pad_tiles([np.ones((3, 8, 8), np.float32)], budget=10)
    with pytest.raises(ValueError, match="tile_size"):
        pad_tiles([], budget=4)
    pv, mask, counts = pad_tiles([], budget=4, tile_size=8)
    assert pv.shape == (4, 3, 8, 8) and not mask.any() and counts == []
