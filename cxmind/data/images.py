"""Safe, uniform image loading for Qwen2.5-VL: one code path from a data row's path to model pixels.

Every dataset stores its images differently (8-bit PNG, 16-bit PNG, JPEG, DICOM with MONOCHROME1 and
VOI windows), and every data row names its image by a path that must not leave the dataset's declared
root. This module turns all of them into 8-bit RGB ``PIL`` images resized exactly as Qwen2.5-VL's image
processor would resize them, so that the processor's own resize is a no-op, token counts are known in
advance, and grounding boxes can be mapped into the frame the model sees.

Failures raise :class:`ImageError` with a short, stable ``reason`` ("missing", "corrupt", "undersized",
"oversized", "escapes root", "unsupported format", "aspect ratio", "invalid path") so that validation
can count and report them, and a message that names the file and the fix.

Untrusted files are checked before their pixels are decoded: an image whose header declares more than
``MAX_SOURCE_PIXELS`` pixels (PNG/JPEG width×height; DICOM Rows×Columns×frames, and its decoded bytes)
is refused as "oversized", so a small decompression bomb cannot exhaust memory.
"""

from __future__ import annotations

import math
import os
import re
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxmind.data.schema import Box
from cxmind.errors import UserError

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_ERROR_REASONS",
    "MAX_SOURCE_PIXELS",
    "PIL_FORMATS",
    "ROBUST_WINDOW_PERCENTILES",
    "ImageBudget",
    "ImageError",
    "PathEscapeError",
    "box_to_qwen",
    "image_tokens",
    "load_image",
    "probe_size",
    "read_image",
    "resolve_under",
    "save_normalised",
    "smart_resize",
    "transform_box",
]

#: The stable ``ImageError.reason`` values.
IMAGE_ERROR_REASONS: tuple[str, ...] = (
    "missing",
    "corrupt",
    "undersized",
    "oversized",
    "escapes root",
    "unsupported format",
    "aspect ratio",
    "invalid path",
)

#: Most pixels a source image may declare before it is decoded (PNG/JPEG width×height, DICOM
#: Rows×Columns×frames): 8192×8192, several times a full-resolution radiograph. Larger files are refused
#: as "oversized" from their header, before any pixel is decoded (decompression bombs). DICOM pixel data
#: may also decode to at most ``_BYTES_PER_PIXEL`` bytes per allowed pixel (16-bit RGBA, as PNG allows).
#: Set per call with ``max_source_pixels`` (:func:`read_image`, :func:`probe_size`) or
#: ``ImageBudget.max_source_pixels`` (:func:`load_image`, validation). Pillow's own hard limit (twice
#: ``PIL.Image.MAX_IMAGE_PIXELS``) also applies.
MAX_SOURCE_PIXELS: int = 8192 * 8192
_BYTES_PER_PIXEL = 8
#: Percentiles of the display window of 16-bit images that carry no window of their own: a few hot or
#: dead pixels (burnt-in markers, detector defects) must not darken or wash out the whole image.
ROBUST_WINDOW_PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: Raster formats decoded with PIL (``Image.format`` names); anything else is "unsupported format".
PIL_FORMATS: tuple[str, ...] = ("PNG", "JPEG")
#: File name suffixes read as DICOM (files with the "DICM" preamble are DICOM whatever their name).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")

_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
_CLAIMED_SUFFIXES = (".png", ".jpg", ".jpeg")
_MAX_ASPECT = 200  # transformers' smart_resize refuses larger aspect ratios
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageError(UserError):
    """An image that cannot be used; ``reason`` is one of ``IMAGE_ERROR_REASONS``, ``path`` the file.

    A :class:`~cxmind.errors.UserError`: the message names the file and the fix (re-download, re-export,
    or correct the data row), so a command stops on it with one line. Validation records it as a reject.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None, reason: str) -> None:
        if reason not in IMAGE_ERROR_REASONS:
            raise ValueError(f"unknown ImageError reason {reason!r}; expected one of {IMAGE_ERROR_REASONS}")
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.reason = reason


class PathEscapeError(ImageError):
    """A data row's image path that leaves the declared image root (absolute, ``..`` or a symlink)."""

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None) -> None:
        super().__init__(message, path=path, reason="escapes root")


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def resolve_under(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> Path:
    """The fully resolved path of a data row's image ``relative`` to ``root``, refusing escapes.

    Absolute paths, ``..`` components that leave the root and symlinks (anywhere on the path) that point
    outside it raise :class:`PathEscapeError`: a data file must not make training read arbitrary files.
    ``..`` and links that stay inside the root are fine. The file itself need not exist. A path with a
    NUL byte (which no file system accepts) raises :class:`ImageError` with reason "invalid path".
    """
    rel = os.fspath(relative)
    root_path = Path(root)
    if "\0" in str(rel):
        raise ImageError(
            f"image path {rel!r} contains a NUL byte, which no file name can hold; fix: correct the data "
            "row's path (the data file is damaged or was written with a bug) or rebuild the data",
            path=None,
            reason="invalid path",
        )
    fix = (
        "fix: write image paths relative to the image root without '..' or absolute prefixes, and keep "
        "symlinks inside the root (copy or link the files in, or declare the root that contains them)"
    )
    if not root_path.is_dir():
        raise ImageError(
            f"image root {root_path} does not exist or is not a directory (row path {rel!r}); "
            "fix: pass the directory that holds the dataset's images",
            path=root_path,
            reason="missing",
        )
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise PathEscapeError(
            f"image path {rel!r} in the data row is absolute, but must be relative to the image root "
            f"{root_path}; {fix}",
            path=rel,
        )
    try:
        real_root = root_path.resolve(strict=True)
        target = (real_root / rel).resolve(strict=False)
    except (OSError, RuntimeError) as err:  # symlink loops
        raise ImageError(
            f"image path {rel!r} under root {root_path} cannot be resolved ({err}); fix: remove the "
            "symlink loop or correct the path",
            path=root_path / rel,
            reason="missing",
        ) from err
    if not target.is_relative_to(real_root):
        raise PathEscapeError(
            f"image path {rel!r} in the data row resolves to {target}, outside the image root {real_root}; "
            f"{fix}",
            path=root_path / rel,
        )
    return target


# ---------------------------------------------------------------------------------------------
# Sizes and tokens
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBudget:
    """Pixel bounds of Qwen2.5-VL's image processor, and the smallest side an image may have.

    ``factor`` is the processor's ``patch_size * merge_size`` (28 for Qwen2.5-VL): resized sides are
    multiples of it and every ``factor``×``factor`` block becomes one ``<|image_pad|>`` token. Images
    smaller than ``min_side`` on either side are refused as "undersized" (thumbnails, broken exports),
    files declaring more than ``max_source_pixels`` as "oversized" before they are decoded.
    """

    min_pixels: int = 56 * 56
    max_pixels: int = 1024 * 28 * 28
    factor: int = 28
    min_side: int = 28
    #: Most pixels a source file may declare before it is decoded (see ``MAX_SOURCE_PIXELS``).
    max_source_pixels: int = MAX_SOURCE_PIXELS

    def __post_init__(self) -> None:
        for name in ("min_pixels", "max_pixels", "factor", "min_side", "max_source_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"ImageBudget.{name} must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise UserError(
                f"ImageBudget.min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels}); "
                "swap them or raise max_pixels"
            )
        if self.max_pixels < self.factor * self.factor:
            raise UserError(
                f"ImageBudget.max_pixels ({self.max_pixels}) is below one {self.factor}x{self.factor} "
                f"block ({self.factor * self.factor} pixels); raise max_pixels"
            )

    @classmethod
    def from_processor(cls, image_processor: Any, *, min_side: int = 28) -> ImageBudget:
        """The budget of a transformers Qwen2-VL/Qwen2.5-VL image processor (or a processor holding one)."""
        ip = getattr(image_processor, "image_processor", image_processor)
        size = ip.size
        get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
        min_pixels = get("shortest_edge") or getattr(ip, "min_pixels", None)
        max_pixels = get("longest_edge") or getattr(ip, "max_pixels", None)
        if min_pixels is None or max_pixels is None:
            raise ValueError(f"image processor {type(ip).__name__} has no min/max pixel bounds in {size!r}")
        return cls(
            min_pixels=int(min_pixels),
            max_pixels=int(max_pixels),
            factor=int(ip.patch_size) * int(ip.merge_size),
            min_side=min_side,
        )


def smart_resize(height: int, width: int, budget: ImageBudget = ImageBudget()) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule: ``(height, width)`` → sides that are multiples of ``budget.factor``.

    The pixel count lands in ``[min_pixels, max_pixels]`` and the aspect ratio is kept as far as possible.
    Bit-for-bit the rule of ``transformers``' ``qwen2_vl`` image processor (same float operations), so
    an image resized here passes through the processor unchanged. Aspect ratios above 200 raise an
    :class:`ImageError` with reason "aspect ratio", as transformers refuses them.
    """
    if height < 1 or width < 1:
        raise ImageError(f"image size {width}x{height} has an empty side", path=None, reason="undersized")
    factor = budget.factor
    if max(height, width) / min(height, width) > _MAX_ASPECT:
        raise ImageError(
            f"image size {width}x{height}: aspect ratio {max(height, width) / min(height, width):.1f} "
            f"exceeds {_MAX_ASPECT}, which Qwen2.5-VL refuses; crop or pad the image",
            path=None,
            reason="aspect ratio",
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > budget.max_pixels:
        beta = math.sqrt((height * width) / budget.max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < budget.min_pixels:
        beta = math.sqrt(budget.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_tokens(width: int, height: int, budget: ImageBudget = ImageBudget()) -> int:
    """The number of ``<|image_pad|>`` tokens Qwen2.5-VL spends on a ``width``×``height`` image."""
    h, w = smart_resize(height, width, budget)
    return (h // budget.factor) * (w // budget.factor)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _head(path: Path, n: int = 132) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _is_dicom(path: Path, head: bytes) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM"


def _claimed_format(path: Path, head: bytes) -> str | None:
    """The raster format a file claims by its magic bytes or its name, if any."""
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            return fmt
    return "image" if path.suffix.lower() in _CLAIMED_SUFFIXES else None


def _check_file(path: Path) -> bytes:
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ImageError(
            f"image {path} {what}; fix: check the image root and the data row's path, or rebuild the data",
            path=path,
            reason="missing",
        )
    try:
        return _head(path)
    except OSError as err:
        raise ImageError(f"image {path} cannot be read: {err}", path=path, reason="missing") from err


def _minmax_u8(arr: np.ndarray) -> np.ndarray:
    """Linearly stretch ``arr`` to 0..255 (a constant image becomes black)."""
    arr = np.asarray(arr, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return _linear_u8(arr, lo, hi)


def _linear_u8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo``..``hi`` mapped linearly onto 0..255, clipped (an empty or non-finite range gives black)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.zeros(np.shape(arr), dtype=np.uint8)
    out = (np.asarray(arr, dtype=np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _robust_u8(arr: np.ndarray) -> np.ndarray:
    """Window ``arr`` onto 0..255 between the ``ROBUST_WINDOW_PERCENTILES`` of its values.

    A few extreme pixels (a burnt-in marker, a hot detector element) then cannot squeeze the anatomy
    into a few grey levels, as a min-max stretch would. An image that is nearly constant between the
    percentiles (a small object on a uniform background) falls back to its full range.
    """
    arr = np.asarray(arr, dtype=np.float32)
    finite = arr if np.isfinite(arr).all() else arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(finite, ROBUST_WINDOW_PERCENTILES))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return _linear_u8(arr, lo, hi)


def _gray_u8_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8)).convert("RGB")


def _pil_to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit/float grey gets a robust percentile window, transparency is composited over white.

    White matches transformers' and qwen-vl-utils' ``convert_rgb``, which Qwen2.5-VL was trained with.
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_u8_to_rgb(_robust_u8(np.asarray(img)))
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _too_large(path: Path, declared: str, limit: int) -> ImageError:
    return ImageError(
        f"image {path} is too large: {declared}, over the limit of {limit:,} pixels (MAX_SOURCE_PIXELS, "
        "ImageBudget.max_source_pixels); refused before decoding; fix: downscale or re-export it, or drop "
        "the row",
        path=path,
        reason="oversized",
    )


def _open_pil(path: Path, head: bytes, max_source_pixels: int) -> Image.Image:
    """``Image.open`` (header only) with the format and the declared pixel count checked."""
    claimed = _claimed_format(path, head)
    try:
        with warnings.catch_warnings():  # Pillow warns above MAX_IMAGE_PIXELS; the check below refuses
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as err:  # over twice Pillow's limit
        match = re.search(r"\((\d+) pixels\)", str(err))
        if match and int(match.group(1)) > max_source_pixels:
            raise _too_large(path, f"it declares {int(match.group(1)):,} pixels", max_source_pixels) from err
        raise ImageError(
            f"image {path} is too large for Pillow ({err}); fix: downscale it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS along with max_source_pixels",
            path=path,
            reason="oversized",
        ) from err
    except UnidentifiedImageError as err:
        if claimed is None:
            raise ImageError(
                f"image {path} is not PNG, JPEG or DICOM; fix: convert it to PNG",
                path=path,
                reason="unsupported format",
            ) from err
        raise ImageError(
            f"image {path} looks like {claimed} but cannot be decoded; fix: re-download or re-export it",
            path=path,
            reason="corrupt",
        ) from err
    if img.format not in PIL_FORMATS:
        img.close()
        raise ImageError(
            f"image {path} is {img.format}; supported formats are {', '.join(PIL_FORMATS)} and "
            "DICOM; fix: convert it to PNG",
            path=path,
            reason="unsupported format",
        )
    width, height = img.size
    if width * height > max_source_pixels:
        img.close()
        raise _too_large(path, f"{width}x{height} = {width * height:,} pixels", max_source_pixels)
    return img


_PIL_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)


def _read_pil(path: Path, head: bytes, max_source_pixels: int) -> Image.Image:
    try:
        with _open_pil(path, head, max_source_pixels) as img:
            img.load()  # decode now: truncated and broken files fail here, not in a dataloader worker
            return _pil_to_rgb8(img)
    except ImageError:
        raise
    except _PIL_DECODE_ERRORS as err:
        raise ImageError(
            f"image {path} cannot be decoded ({type(err).__name__}: {err}); it is probably truncated or "
            "damaged; fix: re-download or re-export it",
            path=path,
            reason="corrupt",
        ) from err


# DICOM -----------------------------------------------------------------------------------------

_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole data set is zlib'd
_MAX_DICOM_HEADER_BYTES = 16 * 1024 * 1024  # inflated header bytes read before the pixel data
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # (Float/Double Float) Pixel Data


def _dicom_corrupt(path: Path, detail: str) -> ImageError:
    return ImageError(f"DICOM {path} {detail}; fix: re-download or re-export it", path=path, reason="corrupt")


def _inflate(fh: Any, inflater: Any, into: bytearray, limit: int) -> bool:
    """Inflate from ``fh`` into ``into`` until it holds ``limit`` bytes; True when the stream ended."""
    while len(into) < limit:
        if inflater.unconsumed_tail:
            chunk = inflater.unconsumed_tail
        else:
            chunk = fh.read(1 << 16)
            if not chunk:
                return True  # end of file (a truncated stream shows up when the data set is parsed)
        into += inflater.decompress(chunk, limit - len(into))
        if inflater.eof:
            return True
    return bool(inflater.eof)


def _check_dicom_header(path: Path, ds: Any, max_source_pixels: int) -> tuple[int, int, int]:
    """Rows, Columns and bytes of pixel data a DICOM header declares, refused when over the limits."""
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 16)
    except (TypeError, ValueError) as err:
        raise _dicom_corrupt(path, f"has an invalid image size header ({err})") from err
    if rows < 1 or cols < 1:
        raise _dicom_corrupt(path, "has no Rows/Columns")
    if frames < 1 or samples < 1 or not (bits == 1 or (bits % 8 == 0 and bits <= 64)):
        raise _dicom_corrupt(
            path, f"declares {frames} frames of {samples} samples of {bits} bits allocated per pixel"
        )
    pixels = rows * cols * frames
    frames_text = f"x{frames} frames" if frames > 1 else ""
    if pixels > max_source_pixels:
        declared = f"its header declares {cols}x{rows}{frames_text} = {pixels:,} pixels"
        raise _too_large(path, declared, max_source_pixels)
    n_bytes = (pixels * samples * bits + 7) // 8
    if n_bytes > _BYTES_PER_PIXEL * max_source_pixels:
        raise ImageError(
            f"image {path} is too large: its header declares {cols}x{rows}{frames_text} pixels of "
            f"{samples} samples x {bits} bits = {n_bytes:,} bytes, over the limit of "
            f"{_BYTES_PER_PIXEL * max_source_pixels:,} bytes ({_BYTES_PER_PIXEL} per allowed pixel), refused "
            "before decoding; fix: downscale or re-export it, or drop the row",
            path=path,
            reason="oversized",
        )
    return rows, cols, n_bytes


def _dicom_dataset(path: Path, *, pixels: bool, max_source_pixels: int) -> Any:
    """A DICOM data set whose declared image size was checked before its pixel data was read.

    With ``pixels=False`` only the header is read. Deflated files are inflated incrementally: the header
    first, and then only as many bytes as the declared image needs, so a tiny file that inflates to
    gigabytes is refused instead of being expanded in memory (pydicom inflates the whole file at once).
    """
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        with path.open("rb") as fh:
            preamble = read_preamble(fh, True)
            meta = _read_file_meta_info(fh)
            if str(meta.get("TransferSyntaxUID", "")) == _DEFLATED:
                return _read_deflated(path, fh, preamble, meta, pixels, max_source_pixels)
    except ImageError:
        raise
    except Exception as err:  # pydicom and zlib raise many types on damaged files
        raise _dicom_corrupt(path, f"cannot be parsed ({type(err).__name__}: {err})") from err
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as err:
        raise _dicom_corrupt(path, f"cannot be parsed ({type(err).__name__}: {err})") from err
    _check_dicom_header(path, header, max_source_pixels)
    if not pixels:
        return header
    try:  # not deflated: reading the pixel data is bounded by the file's size
        return pydicom.dcmread(path, force=True)
    except Exception as err:
        raise _dicom_corrupt(path, f"cannot be parsed ({type(err).__name__}: {err})") from err


def _read_deflated(
    path: Path, fh: Any, preamble: Any, meta: Any, pixels: bool, max_source_pixels: int
) -> Any:
    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    reached = False

    def at_pixels(tag: Any, vr: Any, length: Any) -> bool:
        nonlocal reached
        reached = int(tag) in _PIXEL_TAGS
        return reached

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    size = 1 << 16
    while True:  # inflate a little more until the header has been read up to the pixel data
        ended = _inflate(fh, inflater, inflated, size)
        buffer = DicomBytesIO(bytes(inflated))
        reached, failure = False, None
        try:
            header = read_dataset(buffer, False, True, stop_when=at_pixels)
        except Exception as err:  # a header cut off by the prefix, or a damaged one
            failure = err
        if reached or ended or size >= _MAX_DICOM_HEADER_BYTES:
            break
        size *= 4
    if failure is not None:
        raise failure
    _rows, _cols, n_bytes = _check_dicom_header(path, header, max_source_pixels)
    if not pixels:
        return header
    limit = buffer.tell() + 12 + n_bytes + (1 << 20)  # header, pixel data, room for trailing elements
    if not ended and not _inflate(fh, inflater, inflated, limit):
        raise ImageError(
            f"image {path} is too large: its deflated data inflates to more than {limit:,} bytes, more "
            "than the image its header declares; refused before decoding; fix: re-export it, or drop the row",
            path=path,
            reason="oversized",
        )
    dataset = read_dataset(DicomBytesIO(bytes(inflated)), False, True)
    return FileDataset(str(path), dataset, preamble, meta, False, True)


def _voi_u8(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The file's VOI LUT or window applied and mapped onto 0..255; ``None`` when it has neither.

    The output range of the LUT/window (not of this image's values) maps to 0..255, so the window keeps
    its meaning: an image whose values all lie inside the window is not stretched beyond it.
    """
    from pydicom.pixels import apply_voi_lut

    sequence = ds.get("VOILUTSequence")
    item = sequence[0] if sequence else None
    has_lut = item is not None and item.get("LUTDescriptor") is not None and item.get("LUTData") is not None
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return None
    out = apply_voi_lut(values, ds, index=0)
    if has_lut:
        entries, first = int(item.LUTDescriptor[0]) or 1 << 16, int(item.LUTDescriptor[1])
        ends = apply_voi_lut(np.arange(first, first + entries), ds, index=0)  # every LUT output value
    else:  # pydicom maps below/above the window to the output range's ends
        with np.errstate(over="ignore"):
            ends = apply_voi_lut(np.array([-1e30, 1e30]), ds, index=0)
    return _linear_u8(out, float(np.min(ends)), float(np.max(ends)))


def _read_dicom(path: Path, max_source_pixels: int) -> Image.Image:
    from pydicom.pixels import apply_modality_lut

    ds = _dicom_dataset(path, pixels=True, max_source_pixels=max_source_pixels)
    if "PixelData" not in ds:
        raise _dicom_corrupt(path, "has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(
            f"DICOM {path} has {frames} frames; a radiograph has one; fix: export the frame to use as PNG",
            path=path,
            reason="unsupported format",
        )
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            raise ImageError(
                f"DICOM {path} uses {syntax.name}, which no installed decoder handles ({err}); fix: "
                "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or convert it to PNG",
                path=path,
                reason="unsupported format",
            ) from err
        raise _dicom_corrupt(path, f"pixel data cannot be decoded ({err})") from err
    except Exception as err:
        raise _dicom_corrupt(path, f"pixel data cannot be decoded ({type(err).__name__}: {err})") from err

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour: pydicom already converted YBR to RGB
        rgb = arr[..., :3]
        return Image.fromarray(np.ascontiguousarray(rgb if rgb.dtype == np.uint8 else _minmax_u8(rgb)))
    if arr.ndim != 2:
        raise ImageError(
            f"DICOM {path} has pixel array shape {arr.shape}; expected one greyscale or RGB frame",
            path=path,
            reason="unsupported format",
        )
    try:
        values = apply_modality_lut(arr, ds)
        gray = _voi_u8(values, ds)  # the file's window, when it has one
    except Exception as err:
        raise _dicom_corrupt(
            path, f"has an invalid modality/VOI LUT or window ({type(err).__name__}: {err})"
        ) from err
    if gray is None:  # no window: 8-bit values are shown as stored, deeper ones get a robust window
        gray = values if values.dtype == np.uint8 else _robust_u8(values)
    if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white
        gray = 255 - gray
    return _gray_u8_to_rgb(gray)


def read_image(path: str | os.PathLike[str], *, max_source_pixels: int = MAX_SOURCE_PIXELS) -> Image.Image:
    """Decode a PNG, JPEG or DICOM file into an 8-bit RGB image.

    A file declaring more than ``max_source_pixels`` pixels is refused as "oversized" before decoding.
    DICOM pixel values go through the modality LUT and the file's VOI LUT or window (its output range
    maps to 0..255); MONOCHROME1 is inverted so that bone is always bright. 16-bit greyscale without a
    window (PNG, DICOM) is windowed between the ``ROBUST_WINDOW_PERCENTILES`` of its values, so a few hot
    pixels do not darken it; 8-bit grey is kept as stored. Palette and transparent images become RGB.
    Orientation is the stored pixel order (EXIF rotation is not applied), the frame that dataset boxes
    refer to.
    """
    p = Path(path)
    head = _check_file(p)
    if _is_dicom(p, head):
        return _read_dicom(p, max_source_pixels)
    return _read_pil(p, head, max_source_pixels)


def probe_size(
    path: str | os.PathLike[str], *, max_source_pixels: int = MAX_SOURCE_PIXELS
) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (no pixel decoding; cheap for validation).

    Files declaring more than ``max_source_pixels`` pixels are refused as "oversized", as by
    :func:`read_image`; truncated pixel data is not noticed (only :func:`read_image` decodes it).
    """
    p = Path(path)
    head = _check_file(p)
    if _is_dicom(p, head):
        ds = _dicom_dataset(p, pixels=False, max_source_pixels=max_source_pixels)
        return int(ds.Columns), int(ds.Rows)
    try:
        with _open_pil(p, head, max_source_pixels) as img:
            return img.size
    except ImageError:
        raise
    except _PIL_DECODE_ERRORS as err:
        reason = "corrupt" if _claimed_format(p, head) else "unsupported format"
        raise ImageError(
            f"image {p} header cannot be read ({type(err).__name__}: {err}); fix: re-download or convert it",
            path=p,
            reason=reason,
        ) from err


def load_image(
    root: str | os.PathLike[str], relative: str | os.PathLike[str], budget: ImageBudget = ImageBudget()
) -> Image.Image:
    """A data row's image, ready for Qwen2.5-VL: path checked, decoded, resized to ``smart_resize`` dims.

    The processor's own resize is then a no-op, so :func:`image_tokens` and boxes mapped with
    :func:`transform_box` match what the model sees. Bicubic, as the processor resamples.
    """
    path = resolve_under(root, relative)
    image = read_image(path, max_source_pixels=budget.max_source_pixels)
    width, height = image.size
    if width < budget.min_side or height < budget.min_side:
        raise ImageError(
            f"image {path} is {width}x{height}, below the minimum side of {budget.min_side} pixels; "
            "fix: drop this row or supply the full-resolution image",
            path=path,
            reason="undersized",
        )
    try:
        new_h, new_w = smart_resize(height, width, budget)
        # Rounding can push a ratio just under 200 over it (38x5628 -> 28x5628); the processor would then
        # refuse the resized image, so refuse it here, where the file is known.
        smart_resize(new_h, new_w, budget)
    except ImageError as err:
        raise ImageError(f"image {path}: {err}", path=path, reason=err.reason) from err
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    return image


# ---------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------


def transform_box(box: Box, original_size: tuple[int, int], resized_size: tuple[int, int]) -> Box:
    """``box`` scaled from the original ``(w, h)`` pixel frame to the resized one, clamped to the image.

    Corners are reordered so that ``x0 <= x1`` and ``y0 <= y1``.
    """
    (ow, oh), (rw, rh) = original_size, resized_size
    if min(ow, oh, rw, rh) <= 0:
        raise ValueError(
            f"image sizes must be positive, got original {original_size}, resized {resized_size}"
        )
    sx, sy = rw / ow, rh / oh

    def clamp(value: float, hi: float) -> float:
        return min(max(value, 0.0), float(hi))

    xs = sorted((clamp(box.x0 * sx, rw), clamp(box.x1 * sx, rw)))
    ys = sorted((clamp(box.y0 * sy, rh), clamp(box.y1 * sy, rh)))
    return Box(box.finding, xs[0], ys[0], xs[1], ys[1])


def box_to_qwen(box: Box) -> list[int]:
    """Qwen2.5-VL ``bbox_2d``: absolute integer ``[x1, y1, x2, y2]`` of a box already in the resized frame."""
    return [round(box.x0), round(box.y0), round(box.x1), round(box.y1)]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def save_normalised(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` as PNG, atomically (readers never see a partial file); returns the path.

    Images whose three channels are equal (every radiograph after :func:`read_image`) are stored as
    8-bit greyscale, a third of the size; :func:`read_image` turns them back into the same RGB pixels.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if image.mode == "RGB":
        arr = np.asarray(image)
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            image = Image.fromarray(np.ascontiguousarray(arr[..., 0]))
    elif image.mode not in ("L", "RGBA", "LA", "I;16"):
        image = image.convert("RGB")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data files are meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
