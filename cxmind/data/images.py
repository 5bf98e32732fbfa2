"""Safe, uniform image loading for Qwen2.5-VL: one code path from a data row's path to model pixels.

Every dataset stores its images differently (8-bit PNG, 16-bit PNG, JPEG, DICOM with MONOCHROME1 and
VOI windows), and every data row names its image by a path that must not leave the dataset's declared
root. This module turns all of them into 8-bit RGB ``PIL`` images resized exactly as Qwen2.5-VL's image
processor would resize them, so that the processor's own resize is a no-op, token counts are known in
advance, and grounding boxes can be mapped into the frame the model sees.

Failures raise :class:`ImageError` with a short, stable ``reason`` ("missing", "corrupt", "undersized",
"oversized", "escapes root", "unsupported format", "aspect ratio") so that validation can count and
report them, and a message that names the file and the fix.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxmind.data.schema import Box

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_ERROR_REASONS",
    "PIL_FORMATS",
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
)

#: Raster formats decoded with PIL (``Image.format`` names); anything else is "unsupported format".
PIL_FORMATS: tuple[str, ...] = ("PNG", "JPEG")
#: File name suffixes read as DICOM (files with the "DICM" preamble are DICOM whatever their name).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")

_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
_CLAIMED_SUFFIXES = (".png", ".jpg", ".jpeg")
_MAX_ASPECT = 200  # transformers' smart_resize refuses larger aspect ratios
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is one of ``IMAGE_ERROR_REASONS``, ``path`` the file."""

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
    ``..`` and links that stay inside the root are fine. The file itself need not exist.
    """
    rel = os.fspath(relative)
    root_path = Path(root)
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
    smaller than ``min_side`` on either side are refused as "undersized" (thumbnails, broken exports).
    """

    min_pixels: int = 56 * 56
    max_pixels: int = 1024 * 28 * 28
    factor: int = 28
    min_side: int = 28

    def __post_init__(self) -> None:
        for name in ("min_pixels", "max_pixels", "factor", "min_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageBudget.{name} must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"ImageBudget.min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels}); "
                "swap them or raise max_pixels"
            )
        if self.max_pixels < self.factor * self.factor:
            raise ValueError(
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
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr - lo) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _gray_u8_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8)).convert("RGB")


def _pil_to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit/float grey is min-max stretched, transparency is composited over white.

    White matches transformers' and qwen-vl-utils' ``convert_rgb``, which Qwen2.5-VL was trained with.
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_u8_to_rgb(_minmax_u8(np.asarray(img)))
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _read_pil(path: Path, head: bytes) -> Image.Image:
    claimed = _claimed_format(path, head)
    try:
        with Image.open(path) as img:
            if img.format not in PIL_FORMATS:
                raise ImageError(
                    f"image {path} is {img.format}; supported formats are {', '.join(PIL_FORMATS)} and "
                    "DICOM; fix: convert it to PNG",
                    path=path,
                    reason="unsupported format",
                )
            img.load()  # decode now: truncated and broken files fail here, not in a dataloader worker
            return _pil_to_rgb8(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"image {path} is too large to decode safely ({err}); fix: downscale it",
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
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError) as err:
        raise ImageError(
            f"image {path} cannot be decoded ({type(err).__name__}: {err}); it is probably truncated or "
            "damaged; fix: re-download or re-export it",
            path=path,
            reason="corrupt",
        ) from err


def _read_dicom(path: Path) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    def corrupt(detail: str) -> ImageError:
        return ImageError(
            f"DICOM {path} {detail}; fix: re-download or re-export it", path=path, reason="corrupt"
        )

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as err:  # pydicom raises many types on damaged headers
        raise corrupt(f"cannot be parsed ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds:
        raise corrupt("has no pixel data")
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
        raise corrupt(f"pixel data cannot be decoded ({err})") from err
    except Exception as err:
        raise corrupt(f"pixel data cannot be decoded ({type(err).__name__}: {err})") from err

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
        values = apply_voi_lut(values, ds, index=0)  # the file's window, when it has one
    except Exception as err:
        raise corrupt(f"has an invalid modality/VOI LUT or window ({type(err).__name__}: {err})") from err
    gray = _minmax_u8(values)
    if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white
        gray = 255 - gray
    return _gray_u8_to_rgb(gray)


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode a PNG, JPEG or DICOM file into an 8-bit RGB image.

    16-bit greyscale is min-max stretched to 8 bits; palette and transparent images become RGB; DICOM
    pixel values go through the modality LUT and the file's VOI LUT/window, MONOCHROME1 is inverted so
    that bone is always bright. Orientation is the stored pixel order (EXIF rotation is not applied),
    the frame that dataset boxes refer to.
    """
    p = Path(path)
    head = _check_file(p)
    if _is_dicom(p, head):
        return _read_dicom(p)
    return _read_pil(p, head)


def probe_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (no pixel decoding; cheap for validation)."""
    p = Path(path)
    head = _check_file(p)
    if _is_dicom(p, head):
        import pydicom

        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            rows, cols = ds.get("Rows"), ds.get("Columns")
        except Exception as err:
            raise ImageError(
                f"DICOM {p} header cannot be parsed ({type(err).__name__}: {err}); fix: re-download it",
                path=p,
                reason="corrupt",
            ) from err
        if not rows or not cols:
            raise ImageError(f"DICOM {p} has no Rows/Columns; fix: re-export it", path=p, reason="corrupt")
        return int(cols), int(rows)
    try:
        with Image.open(p) as img:
            if img.format not in PIL_FORMATS:
                raise ImageError(
                    f"image {p} is {img.format}; supported formats are {', '.join(PIL_FORMATS)} and DICOM",
                    path=p,
                    reason="unsupported format",
                )
            return img.size
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
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
    image = read_image(path)
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
