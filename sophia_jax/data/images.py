"""InternVL dynamic-resolution image tiling in numpy + PIL.

This mirrors the preprocessing of the original InternVL code (``dynamic_preprocess`` and ``load_image`` in
``internvl_chat/internvl/train/dataset.py`` and the model README), which is what InternVL2.5 / InternVL3 were
trained and evaluated with:

1. Pick a grid of ``cols x rows`` tiles whose aspect ratio ``cols / rows`` is closest to ``W / H`` among all grids
   with ``min_tiles <= cols * rows <= max_tiles`` (tie-break rule: see :func:`choose_grid`).
2. Resize the whole image to ``(tile * cols, tile * rows)`` with PIL bicubic resampling.
3. Cut it into ``cols * rows`` square tiles, row-major (left to right, then top to bottom).
4. If there is more than one tile and ``use_thumbnail`` is set, append the whole image resized to
   ``tile x tile`` (bicubic) as the **last** tile.
5. Per tile: ``/ 255`` then ``(x - mean) / std`` with the ImageNet statistics, all in float32 (the same arithmetic
   as torchvision's ``ToTensor`` + ``Normalize``), giving ``float32[n_tiles, 3, tile, tile]``.

Colour modes: like the original, any image that is not ``RGB`` goes through PIL's ``Image.convert("RGB")`` *before*
tiling. In particular an alpha channel (RGBA, LA, PA, palette transparency) is simply dropped -- it is not
composited onto white as transformers' ``convert_to_rgb`` does -- and CMYK / L / P / I / 1 use PIL's own conversion.

EXIF orientation: the original does not apply the EXIF ``Orientation`` tag, and neither does this module: pixels
are used in stored order, so a photo that a viewer shows rotated is tiled unrotated. This keeps pixel parity with
the reference model's preprocessing. Call ``PIL.ImageOps.exif_transpose`` yourself before :func:`tile_image` if you
want the other behaviour.

Several images are batched for one compiled JAX graph by :func:`pad_tiles`, which concatenates their tiles in flat
order (the order in which InternVL scatters image embeddings) and zero-pads to a fixed tile budget.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import os
import struct
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from sophia_jax.errors import UserError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageError",
    "TileBudgetError",
    "TilingConfig",
    "candidate_grids",
    "choose_grid",
    "num_tiles_for_size",
    "open_image",
    "load_image",
    "read_archive_member",
    "tile_image",
    "pad_tiles",
    "shared_budget",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_MEAN32 = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD32 = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)


class ImageError(UserError, ValueError):
    """An image could not be read or used (missing, empty, corrupt, truncated, zero-sized...)."""


class TileBudgetError(ValueError):
    """The images of one batch have more tiles than the fixed tile budget allows."""


@dataclasses.dataclass(frozen=True)
class TilingConfig:
    """Settings of InternVL dynamic tiling (defaults: InternVL2.5 / InternVL3 inference)."""

    tile_size: int = 448
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {self.tile_size}")
        if self.min_tiles < 1:
            raise ValueError(f"min_tiles must be >= 1, got {self.min_tiles}")
        if self.max_tiles < self.min_tiles:
            raise ValueError(f"max_tiles ({self.max_tiles}) must be >= min_tiles ({self.min_tiles})")

    @property
    def max_tiles_per_image(self) -> int:
        """Upper bound on the tiles one image can produce (grid tiles plus the thumbnail)."""
        return self.max_tiles + (1 if self.use_thumbnail and self.max_tiles > 1 else 0)


def shared_budget(config: TilingConfig, num_images: int, total_tiles: int) -> TilingConfig:
    """The tiling for each of ``num_images`` images of one prompt that share ``total_tiles`` tiles.

    Every image gets the same cap, the largest ``max_tiles`` (at most ``config.max_tiles``, at least 1) whose
    worst case -- the grid plus its thumbnail -- times ``num_images`` fits ``total_tiles``; so a question with
    several images always fits the budget of one prefill. InternVL's multi-image evaluation (VLMEvalKit) divides
    a budget of grid tiles the same way (``max(1, min(max_num, total // images))``), without counting thumbnails.
    Raises :class:`TileBudgetError` when even one tile per image exceeds the budget.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if num_images > total_tiles:
        raise TileBudgetError(f"{num_images} images need at least {num_images} tiles; the budget is {total_tiles}")
    cap = config.max_tiles
    while cap > 1 and num_images * (cap + (1 if config.use_thumbnail else 0)) > total_tiles:
        cap -= 1
    return dataclasses.replace(config, min_tiles=min(config.min_tiles, cap), max_tiles=cap)


# ----------------------------------------------------------------------------------------------------------------
# Grid choice
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All ``(cols, rows)`` grids with ``min_tiles <= cols * rows <= max_tiles``, in InternVL's scan order.

    InternVL collects the grids in a Python ``set`` (inserting them while looping ``n`` over
    ``min..max``, then ``cols`` and ``rows`` over ``1..n``) and stable-sorts that set by tile count. Grids with the
    same tile count therefore keep CPython's set iteration order, which is fully deterministic here: the hash of a
    tuple of small ints is not salted by ``PYTHONHASHSEED`` and the insertion sequence is fixed. We rebuild the very
    same set to inherit that order.

    With ``min_tiles == 1`` the order among equal tile counts can never change the chosen grid (two grids with the
    same count are never jointly closest), so the result then also equals transformers'
    ``get_optimal_tiled_canvas``, which scans in lexicographic ``(cols, rows)`` order. With ``min_tiles > 1``
    exact ties between equal-count grids become possible (e.g. ``min=max=4`` and ``W/H = 5/2``: ``(2, 2)`` vs
    ``(4, 1)``) and then the two implementations can pick differently; we follow the original InternVL.
    """
    if min_tiles < 1 or max_tiles < min_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    pool = set()
    for n in range(min_tiles, max_tiles + 1):
        for cols in range(1, n + 1):
            for rows in range(1, n + 1):
                if min_tiles <= cols * rows <= max_tiles:
                    pool.add((cols, rows))
    return tuple(sorted(pool, key=lambda grid: grid[0] * grid[1]))


def choose_grid(width: int, height: int, config: TilingConfig = TilingConfig()) -> tuple[int, int]:
    """Return the ``(cols, rows)`` tile grid InternVL uses for a ``width x height`` image.

    The grid whose ratio ``cols / rows`` is closest to ``width / height`` wins. On an exact tie (same float
    difference) a later candidate in :func:`candidate_grids` order replaces the current best only when the image
    area exceeds half the area the later grid covers (``W * H > 0.5 * tile**2 * cols * rows``), i.e. more tiles
    are taken only for images large enough to use them.
    """
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height})")
    aspect = width / height
    area = width * height
    tile = config.tile_size
    best = (1, 1)
    best_diff = float("inf")
    for cols, rows in candidate_grids(config.min_tiles, config.max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def num_tiles_for_size(width: int, height: int, config: TilingConfig = TilingConfig()) -> int:
    """Number of tiles :func:`tile_image` returns for a ``width x height`` image (thumbnail included)."""
    cols, rows = choose_grid(width, height, config)
    n = cols * rows
    return n + 1 if (config.use_thumbnail and n > 1) else n


# ----------------------------------------------------------------------------------------------------------------
# Tiling
# ----------------------------------------------------------------------------------------------------------------


def _to_pil_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            raise ImageError(f"numpy images must be uint8 HxW or HxWxC (C in 1, 3, 4), got dtype {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ImageError(f"numpy images must be HxW or HxWxC (C in 1, 3, 4), got shape {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ImageError(f"image has zero size (array shape {arr.shape})")
        image = Image.fromarray(np.ascontiguousarray(arr))
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.width <= 0 or image.height <= 0:
        raise ImageError(f"image has zero size ({image.width}x{image.height})")
    if image.mode != "RGB":
        try:
            with warnings.catch_warnings():
                # Palette images with transparency warn that RGBA would be better; the original drops alpha too.
                warnings.simplefilter("ignore", UserWarning)
                image = image.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ImageError(f"cannot convert image of mode {image.mode!r} to RGB: {exc}") from exc
    return image


def _normalise(tile: Image.Image) -> np.ndarray:
    """uint8 HWC tile -> float32 CHW, ``(x / 255 - mean) / std`` computed in float32 like torchvision."""
    chw = np.asarray(tile, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
    chw /= np.float32(255.0)
    chw -= _MEAN32
    chw /= _STD32
    return chw


def tile_image(image: Image.Image | np.ndarray, config: TilingConfig = TilingConfig()) -> np.ndarray:
    """Tile one image the InternVL way.

    Args:
      image: a PIL image (any mode; converted with ``convert("RGB")``) or a uint8 numpy array ``HxW``,
        ``HxWx1``, ``HxWx3`` (RGB) or ``HxWx4`` (RGBA, alpha dropped).
      config: tiling settings.

    Returns:
      ``float32[n_tiles, 3, tile, tile]``; the thumbnail, if any, is the last tile.
    """
    rgb = _to_pil_rgb(image)
    cols, rows = choose_grid(rgb.width, rgb.height, config)
    tile = config.tile_size
    canvas = rgb.resize((tile * cols, tile * rows), Image.Resampling.BICUBIC)
    crops = []
    for r in range(rows):
        for c in range(cols):
            crops.append(canvas.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)))
    if config.use_thumbnail and len(crops) > 1:
        crops.append(rgb.resize((tile, tile), Image.Resampling.BICUBIC))
    out = np.empty((len(crops), 3, tile, tile), dtype=np.float32)
    for k, crop in enumerate(crops):
        out[k] = _normalise(crop)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def _describe(source: str | bytes | os.PathLike, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<inline image, {len(source)} bytes>"
    return os.fspath(source)


def open_image(source: str | bytes | os.PathLike, *, name: str | None = None) -> Image.Image:
    """Open, check and fully decode an image, returning it as an ``RGB`` PIL image.

    ``source`` is a filesystem path (``str`` or ``os.PathLike``) or the encoded file content (``bytes``).
    Every failure -- missing or unreadable file, empty data, unknown format, corrupt or truncated data, zero size,
    decompression-bomb sized images -- raises :class:`ImageError` whose message names the source (``name``
    overrides how it is named, e.g. ``"data.jsonl:12"``).

    Truncated files are rejected as long as Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its
    default ``False``.
    """
    label = _describe(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except FileNotFoundError as exc:
            raise ImageError(f"image file not found: {label}") from exc
        except OSError as exc:
            raise ImageError(f"cannot read image file {label}: {exc}") from exc
    else:
        raise TypeError(f"image source must be a path or bytes, got {type(source).__name__}")

    if not data:
        raise ImageError(f"image is empty (0 bytes): {label}")
    try:
        # verify() checks the container (e.g. PNG chunk CRCs) without decoding; the image must be reopened after.
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        img = Image.open(io.BytesIO(data))
        img.load()
        if img.width <= 0 or img.height <= 0:
            raise ImageError(f"image has zero size ({img.width}x{img.height}): {label}")
        rgb = _to_pil_rgb(img)
        rgb.load()
    except ImageError as exc:
        if label in str(exc):
            raise
        raise ImageError(f"{exc}: {label}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not a recognised image format: {label}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large (decompression bomb guard): {label}: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, MemoryError) as exc:
        kind = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageError(f"{kind} image ({type(exc).__name__}: {exc}): {label}") from exc
    except Exception as exc:  # any other decoder failure: still one clear error type for callers
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc}): {label}") from exc
    return rgb


@functools.lru_cache(maxsize=16)
def _archive_index(archive: str) -> tuple[zipfile.ZipFile, dict[str, list[str]]]:
    """The open archive and its members by base name (for paths recorded relative to another folder)."""
    zf = zipfile.ZipFile(archive)
    by_name: dict[str, list[str]] = collections.defaultdict(list)
    for member in zf.namelist():
        if not member.endswith("/"):
            by_name[PurePosixPath(member).name].append(member)
    return zf, dict(by_name)


def read_archive_member(archive: str | os.PathLike, member: str, *, name: str | None = None) -> bytes:
    """The bytes of ``member`` of a zip archive.

    The member is looked up exactly, then as the only member ending in ``/member``, then as the only member with
    the same base name: a record's ``images/1.jpg`` is found whether the zip holds ``images/1.jpg`` or
    ``MathVista/images/1.jpg``. Raises :class:`ImageError` naming the image when it is not there.
    """
    label = name or f"{archive}!{member}"
    try:
        zf, by_name = _archive_index(os.fspath(archive))
    except (OSError, zipfile.BadZipFile) as exc:
        raise ImageError(f"cannot open image archive {archive}: {exc}") from exc
    member = member.lstrip("/")
    candidates = [member] if member in zf.NameToInfo else [
        m for m in by_name.get(PurePosixPath(member).name, []) if m.endswith("/" + member)
    ] or by_name.get(PurePosixPath(member).name, [])
    if len(candidates) != 1:
        what = "not in the archive" if not candidates else f"ambiguous ({len(candidates)} members match)"
        raise ImageError(f"image {what}: {label}")
    try:
        return zf.read(candidates[0])
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
        raise ImageError(f"cannot read image from archive ({exc}): {label}") from exc


def load_image(
    source: str | bytes | os.PathLike,
    config: TilingConfig = TilingConfig(),
    *,
    name: str | None = None,
) -> np.ndarray:
    """Open ``source`` (path or encoded bytes) and tile it: ``float32[n_tiles, 3, tile, tile]``.

    Raises :class:`ImageError` naming the source for any unreadable image (see :func:`open_image`).
    """
    return tile_image(open_image(source, name=name), config)


# ----------------------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------------------


def pad_tiles(
    tiles_list: Sequence[np.ndarray],
    budget: int,
    *,
    tile_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Concatenate the tiles of several images and zero-pad them to a fixed tile budget.

    Args:
      tiles_list: per image, a ``float32[n_i, 3, H, W]`` array (as returned by :func:`tile_image`); all images
        must share ``H, W``.
      budget: the fixed number of tile slots of the compiled graph.
      tile_size: tile side used to shape the output when ``tiles_list`` is empty (otherwise taken from the data).

    Returns:
      ``(pixel_values float32[budget, 3, H, W], tile_mask bool[budget], tiles_per_image list[int])``. Real tiles
      come first in flat order (image 0's tiles, then image 1's, ...), followed by all-zero padding tiles whose
      mask entry is ``False``.

    Raises:
      TileBudgetError: when the images have more tiles in total than ``budget``.
      ValueError: for malformed inputs (wrong rank, mismatched tile shapes, negative budget).
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    shape: tuple[int, int] | None = None
    counts: list[int] = []
    for k, tiles in enumerate(tiles_list):
        tiles = np.asarray(tiles)
        if tiles.ndim != 4 or tiles.shape[1] != 3:
            raise ValueError(f"image {k}: expected tiles of shape [n, 3, H, W], got {tiles.shape}")
        if shape is None:
            shape = (tiles.shape[2], tiles.shape[3])
        elif (tiles.shape[2], tiles.shape[3]) != shape:
            raise ValueError(f"image {k}: tile size {tiles.shape[2:]} differs from the first image's {shape}")
        counts.append(int(tiles.shape[0]))
    if shape is None:
        if tile_size is None:
            raise ValueError("pad_tiles needs tile_size when tiles_list is empty")
        shape = (tile_size, tile_size)
    elif tile_size is not None and shape != (tile_size, tile_size):
        raise ValueError(f"tiles are {shape[0]}x{shape[1]} but tile_size={tile_size}")
    total = sum(counts)
    if total > budget:
        raise TileBudgetError(
            f"{total} tiles from {len(counts)} image(s) (per image: {counts}) exceed the tile budget of {budget}"
        )
    pixel_values = np.zeros((budget, 3, *shape), dtype=np.float32)
    tile_mask = np.zeros((budget,), dtype=bool)
    offset = 0
    for tiles, n in zip(tiles_list, counts):
        pixel_values[offset : offset + n] = tiles
        offset += n
    tile_mask[:total] = True
    return pixel_values, tile_mask, counts
