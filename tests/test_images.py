"""Tests of ``cxmind.data.images``: path safety, Qwen2.5-VL resize/token arithmetic, decoding, boxes."""

from __future__ import annotations

import contextlib
import io
import os
import random
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

from cxmind.data.images import (
    IMAGE_ERROR_REASONS,
    MAX_SOURCE_PIXELS,
    ImageBudget,
    ImageError,
    PathEscapeError,
    box_to_qwen,
    image_tokens,
    load_image,
    probe_size,
    read_image,
    resolve_under,
    save_normalised,
    smart_resize,
    transform_box,
)
from cxmind.data.schema import Box

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _png(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def _gray(width: int = 64, height: int = 48) -> Image.Image:
    arr = (np.arange(width * height).reshape(height, width) % 251).astype(np.uint8)
    return Image.fromarray(arr)


def _dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
) -> Path:
    """A real Part-10 DICOM file: 16 bits allocated, 12 stored, unsigned, explicit VR little endian.

    ``voi_lut``: a VOI LUT Sequence item mapping stored values 0.. onto these 16-bit entries.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])  # LUT Data
        ds.VOILUTSequence = [item]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A real decompression bomb: an all-black 1-bit PNG of width x height pixels, ~100 KB on disk."""
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    deflate = zlib.compressobj(9)
    block = 1024
    idat = b"".join(deflate.compress(row * min(block, height - y)) for y in range(0, height, block))
    idat += deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
    path.write_bytes(png + _png_chunk(b"IEND", b""))
    return path


def _raw_deflate_zeros(n: int) -> bytes:
    """Raw deflate blocks (no final block) of ``n`` zero bytes, made in no time from one repeated block."""
    mib = 1 << 20
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = block.compress(bytes(mib)) + block.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, self-contained
    rest = zlib.compressobj(9, zlib.DEFLATED, -15)
    return segment * (n // mib) + rest.compress(bytes(n % mib)) + rest.flush(zlib.Z_FULL_FLUSH)


def _deflated_dicom(
    path: Path,
    rows: int,
    cols: int,
    *,
    pixels: bytes | None = None,
    zeros: int | None = None,
    bits: int = 16,
    frames: int = 1,
    samples: int = 1,
) -> Path:
    """A Deflated Explicit VR Little Endian DICOM declaring ``rows`` x ``cols`` (x ``frames``) pixels.

    Its pixel data is ``pixels``, or ``zeros`` zero bytes (a decompression bomb: streamed, never held).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = min(bits, 12)
    ds.HighBit = min(bits, 12) - 1
    ds.PixelRepresentation = 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n = len(pixels) if pixels is not None else int(zeros or 0)
    element = b"\xe0\x7f\x10\x00" + (b"OB" if bits == 8 else b"OW") + b"\x00\x00" + struct.pack("<I", n)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = deflate.compress(body.getvalue() + element)
    if pixels is not None:
        stream += deflate.compress(pixels) + deflate.flush()
    else:
        stream += deflate.flush(zlib.Z_FULL_FLUSH) + _raw_deflate_zeros(n) + b"\x03\x00"  # empty final block
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    path.write_bytes(out.getvalue() + stream)
    return path


def _dicom_pixels() -> np.ndarray:
    """Four vertical bands: 0 | 1800 | 2300 | 4095 (12-bit)."""
    arr = np.zeros((40, 64), dtype=np.uint16)
    arr[:, 16:32], arr[:, 32:48], arr[:, 48:] = 1800, 2300, 4095
    return arr


# ---------------------------------------------------------------------------------------------
# resolve_under
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _png(root / "a" / "b" / "c.png", _gray())
    _png(outside / "secret.png", _gray())
    return root, outside


def test_resolve_under_accepts_nested_paths_and_inner_links(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    target = (root / "a" / "b" / "c.png").resolve()
    assert resolve_under(root, "a/b/c.png") == target
    assert resolve_under(str(root), Path("a") / "b" / "c.png") == target
    assert resolve_under(root, "a/b/../b/c.png") == target  # '..' that stays inside is fine
    (root / "alias.png").symlink_to(root / "a" / "b" / "c.png")
    (root / "linkdir").symlink_to(root / "a", target_is_directory=True)
    assert resolve_under(root, "alias.png") == target
    assert resolve_under(root, "linkdir/b/c.png") == target
    assert resolve_under(root, "a/not-yet-written.png") == (root / "a" / "not-yet-written.png").resolve()


def test_resolve_under_through_a_symlinked_root(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = tree
    (tmp_path / "root-link").symlink_to(root, target_is_directory=True)
    assert resolve_under(tmp_path / "root-link", "a/b/c.png") == (root / "a" / "b" / "c.png").resolve()


@pytest.mark.parametrize("row_path", ["../outside/secret.png", "a/../../outside/secret.png", "a/b/../../.."])
def test_resolve_under_refuses_dotdot_escapes(tree: tuple[Path, Path], row_path: str) -> None:
    root, _ = tree
    with pytest.raises(PathEscapeError) as info:
        resolve_under(root, row_path)
    err = info.value
    assert err.reason == "escapes root" and isinstance(err, ImageError) and isinstance(err, ValueError)
    message = str(err)
    assert row_path in message and str(root.resolve()) in message and "fix:" in message


def test_resolve_under_refuses_absolute_paths(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    for row_path in (str(outside / "secret.png"), str(root / "a" / "b" / "c.png"), "C:\\data\\x.png", "/x"):
        with pytest.raises(PathEscapeError, match="absolute"):
            resolve_under(root, row_path)


def test_resolve_under_refuses_symlinks_leading_outside(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "a" / "evil.png").symlink_to(outside / "secret.png")
    (root / "external").symlink_to(outside, target_is_directory=True)
    (root / "a" / "dangling.png").symlink_to(outside / "not-there.png")
    for row_path in ("a/evil.png", "external/secret.png", "a/dangling.png", "external"):
        with pytest.raises(PathEscapeError, match="outside the image root"):
            resolve_under(root, row_path)


def test_resolve_under_needs_an_existing_root(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"image root .* does not exist") as info:
        resolve_under(tmp_path / "nope", "x.png")
    assert info.value.reason == "missing"


# ---------------------------------------------------------------------------------------------
# smart_resize and tokens
# ---------------------------------------------------------------------------------------------

TINY_BUDGET = ImageBudget(min_pixels=56 * 56, max_pixels=224 * 224, factor=28, min_side=28)


def _random_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # ordinary photographs and radiographs
            h, w = rng.randint(28, 5000), rng.randint(28, 5000)
        elif kind == 1:  # tiny images, below min_pixels
            h, w = rng.randint(1, 80), rng.randint(1, 80)
        elif kind == 2:  # extreme aspect ratios up to (and a bit past) the limit of 200
            short = rng.randint(1, 60)
            h, w = short, min(short * rng.randint(1, 210), 20000)
            if rng.random() < 0.5:
                h, w = w, h
        else:  # huge scans
            h, w = rng.randint(2000, 14000), rng.randint(2000, 14000)
        sizes.append((h, w))
    return sizes


@pytest.mark.parametrize(
    "budget",
    [ImageBudget(), TINY_BUDGET, ImageBudget(min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28)],
    ids=["default", "tiny", "wide"],
)
def test_smart_resize_equals_transformers(budget: ImageBudget) -> None:
    checked = refused = 0
    for h, w in _random_sizes(2400, seed=budget.max_pixels):
        try:
            expected = hf_smart_resize(
                h, w, factor=budget.factor, min_pixels=budget.min_pixels, max_pixels=budget.max_pixels
            )
        except ValueError:
            with pytest.raises(ImageError) as info:
                smart_resize(h, w, budget)
            assert info.value.reason == "aspect ratio"
            refused += 1
            continue
        got = smart_resize(h, w, budget)
        assert got == tuple(expected), (h, w)
        rh, rw = got
        assert rh % budget.factor == 0 and rw % budget.factor == 0
        checked += 1
    assert checked >= 2000 and refused > 0


def test_smart_resize_is_idempotent_and_rejects_empty_sides() -> None:
    amplified = 0
    for h, w in _random_sizes(2000, seed=7):
        if max(h, w) / min(h, w) > 200:
            continue
        once = smart_resize(h, w)
        if max(once) / min(once) > 200:  # rounding a short side down can push the ratio over the limit
            amplified += 1
            with pytest.raises(ImageError):
                smart_resize(*once)
            continue
        assert smart_resize(*once) == once
    assert smart_resize(38, 5628) == (28, 5628) and amplified > 0
    with pytest.raises(ImageError) as info:
        smart_resize(0, 10)
    assert info.value.reason == "undersized"


def test_image_tokens_arithmetic() -> None:
    assert image_tokens(28, 28) == 4  # raised to min_pixels = 56*56: a 2x2 grid of 28-pixel blocks
    assert image_tokens(448, 448) == 256
    assert image_tokens(4000, 4000) <= ImageBudget().max_pixels // (28 * 28)
    h, w = hf_smart_resize(200, 300, factor=28, min_pixels=56 * 56, max_pixels=224 * 224)
    assert image_tokens(300, 200, TINY_BUDGET) == (h // 28) * (w // 28) == 54  # 168x252: scaled down


def test_image_budget_validation() -> None:
    with pytest.raises(ValueError, match=r"min_pixels .* exceeds max_pixels"):
        ImageBudget(min_pixels=1000, max_pixels=999)
    with pytest.raises(ValueError, match="positive integer"):
        ImageBudget(factor=0)
    with pytest.raises(ValueError, match="positive integer"):
        ImageBudget(min_side=True)
    with pytest.raises(ValueError, match="one 28x28 block"):
        ImageBudget(min_pixels=10, max_pixels=100)


def test_image_tokens_match_the_tiny_qwen25_vl_processor(tiny_qwen25_vl_path: Path, tmp_path: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen25_vl_path)
    budget = ImageBudget.from_processor(processor)
    assert budget == TINY_BUDGET
    pad_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    text = "<|vision_start|><|image_pad|><|vision_end|>Describe."
    for width, height in [(224, 224), (300, 200), (500, 310), (30, 40), (57, 1000), (1000, 29), (640, 512)]:
        image = Image.new("RGB", (width, height), (90, 90, 90))
        batch = processor(text=[text], images=[image], return_tensors="pt")
        assert int((batch["input_ids"] == pad_id).sum()) == image_tokens(width, height, budget), (
            width,
            height,
        )
        # a load_image'd image goes through the processor without being resized again
        _png(tmp_path / f"{width}x{height}.png", image)
        loaded = load_image(tmp_path, f"{width}x{height}.png", budget)
        grid = processor.image_processor(images=[loaded], return_tensors="pt")["image_grid_thw"][0].tolist()
        assert [grid[1] * 14, grid[2] * 14] == [loaded.height, loaded.width]


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------


def test_read_png_8bit_grey_keeps_values(tmp_path: Path) -> None:
    gray = _gray()
    image = read_image(_png(tmp_path / "g.png", gray))
    assert image.mode == "RGB" and image.size == (64, 48)
    arr = np.asarray(image)
    assert np.array_equal(arr[..., 0], np.asarray(gray)) and np.array_equal(arr[..., 0], arr[..., 2])


def test_read_png_16bit_gets_a_robust_percentile_window(tmp_path: Path) -> None:
    arr = np.linspace(1000, 5000, 40 * 50).reshape(40, 50).astype(np.uint16)
    path = _png(tmp_path / "sixteen.png", Image.fromarray(arr))
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I")  # really stored as 16-bit
    out = np.asarray(read_image(path))[..., 0].astype(int)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel()) >= 0)  # monotone
    lo, hi = np.percentile(arr.astype(float), (0.5, 99.5))
    expected = np.clip(np.rint((arr.astype(float) - lo) / (hi - lo) * 255), 0, 255)
    assert np.abs(out - expected).max() <= 1


def _hot(arr: np.ndarray, value: int) -> np.ndarray:
    hot = arr.copy()
    hot[3, 7] = value  # one hot pixel: a burnt-in marker or a defective detector element
    return hot


def test_one_hot_pixel_keeps_the_contrast_of_a_16bit_png(tmp_path: Path) -> None:
    arr = np.linspace(1000, 3000, 60 * 80).reshape(60, 80).astype(np.uint16)
    clean = np.asarray(read_image(_png(tmp_path / "clean.png", Image.fromarray(arr))))[..., 0]
    hot = np.asarray(read_image(_png(tmp_path / "hot.png", Image.fromarray(_hot(arr, 65535)))))[..., 0]
    assert 120 < clean.mean() < 135
    assert abs(float(hot.mean()) - float(clean.mean())) < 2  # min-max would give a mean near 4
    assert hot[3, 7] == 255 and np.ptp(hot) == 255


def test_one_hot_pixel_keeps_the_contrast_of_a_dicom_without_window(tmp_path: Path) -> None:
    arr = np.linspace(1000, 2000, 60 * 80).reshape(60, 80).astype(np.uint16)
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        clean = np.asarray(read_image(_dicom(tmp_path / f"c{photometric}.dcm", arr, photometric=photometric)))
        hot = np.asarray(
            read_image(_dicom(tmp_path / f"h{photometric}.dcm", _hot(arr, 4095), photometric=photometric))
        )
        assert abs(float(hot[..., 0].mean()) - float(clean[..., 0].mean())) < 2, photometric
        assert 110 < clean[..., 0].mean() < 145
    # a dead pixel (0) is clipped in the same way
    dead = np.asarray(read_image(_dicom(tmp_path / "dead.dcm", _hot(arr, 0))))[..., 0]
    assert (
        abs(float(dead.mean()) - float(np.asarray(read_image(tmp_path / "cMONOCHROME2.dcm"))[..., 0].mean()))
        < 2
    )


def test_dicom_window_keeps_its_own_range(tmp_path: Path) -> None:
    """Values that all lie inside the window are not stretched beyond it (PS3.3 C.11.2.1.2)."""
    pixels = np.full((40, 64), 1800, dtype=np.uint16)
    pixels[:, 32:] = 2300
    out = np.asarray(read_image(_dicom(tmp_path / "inside.dcm", pixels, window=(2048, 1024))))[0, [0, 40], 0]
    expected = _window(np.array([1800.0, 2300.0]), 2048, 1024)
    assert np.abs(out - expected).max() <= 2  # min-max of the windowed values would give 0 and 255
    inverted = np.asarray(
        read_image(_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1", window=(2048, 1024)))
    )[0, [0, 40], 0]
    assert np.abs(inverted - (255 - expected)).max() <= 2


def test_dicom_voi_lut_sequence_maps_the_lut_range(tmp_path: Path) -> None:
    pixels = np.full((40, 64), 1024, dtype=np.uint16)
    pixels[:, 32:] = 2048
    lut = np.arange(4096) // 4  # entries 0..1023
    path = _dicom(tmp_path / "lut.dcm", pixels, voi_lut=lut, window=(100, 10))  # the LUT wins over the window
    out = np.asarray(read_image(path))[0, [0, 40], 0].astype(float)
    assert np.abs(out - np.array([256, 512]) / 1023 * 255).max() <= 1


def test_read_png_rgba_and_palette_become_rgb(tmp_path: Path) -> None:
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    rgba[:, :15] = (200, 100, 50, 255)  # opaque
    rgba[:, 15:] = (10, 20, 30, 0)  # fully transparent: composited over white, as Qwen's convert_rgb does
    image = read_image(_png(tmp_path / "rgba.png", Image.fromarray(rgba)))
    assert image.mode == "RGB"
    assert image.getpixel((2, 2)) == (200, 100, 50) and image.getpixel((25, 2)) == (255, 255, 255)

    palette = Image.fromarray(np.asarray(_gray(32, 32))).convert("P")
    out = read_image(_png(tmp_path / "palette.png", palette))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(palette.convert("RGB")))

    la = Image.merge("LA", (_gray(32, 32), Image.new("L", (32, 32), 255)))
    assert np.array_equal(
        np.asarray(read_image(_png(tmp_path / "la.png", la)))[..., 1], np.asarray(_gray(32, 32))
    )


def test_read_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    Image.new("RGB", (80, 60), (120, 130, 140)).save(path, format="JPEG", quality=95)
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (80, 60)
    assert np.abs(np.asarray(image).astype(int) - (120, 130, 140)).max() <= 3
    path = tmp_path / "grey.jpeg"
    _gray().save(path, format="JPEG")
    assert read_image(path).mode == "RGB"


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear window onto 0..255."""
    lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.where(values <= lo, 0, np.where(values > hi, 255, scaled))


def test_read_dicom_monochrome2_applies_the_voi_window(tmp_path: Path) -> None:
    pixels = _dicom_pixels()
    path = _dicom(tmp_path / "m2.dcm", pixels, window=(2048, 1024))
    out = np.asarray(read_image(path))
    assert out.shape == (40, 64, 3) and out.dtype == np.uint8
    band = out[0, [0, 20, 40, 60], 0].astype(float)
    expected = _window(np.array([0.0, 1800, 2300, 4095]), 2048, 1024)
    assert np.abs(band - expected).max() <= 2
    # without the window the same file is plain min-max scaled: the window really changed the contrast
    plain = np.asarray(read_image(_dicom(tmp_path / "plain.dcm", pixels)))[0, [0, 20, 40, 60], 0]
    assert np.abs(plain - np.rint(np.array([0, 1800, 2300, 4095]) / 4095 * 255)).max() <= 1
    assert abs(int(plain[1]) - int(band[1])) > 30


def test_read_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = _dicom_pixels()
    m1 = np.asarray(read_image(_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")))[..., 0]
    m2 = np.asarray(read_image(_dicom(tmp_path / "m2.dcm", pixels, photometric="MONOCHROME2")))[..., 0]
    assert (
        m1[0, 60] == 0 and m1[0, 0] == 255
    )  # bright in the file (4095) is dark: MONOCHROME1 means low=white
    assert np.array_equal(m1.astype(int), 255 - m2.astype(int))
    windowed = np.asarray(
        read_image(_dicom(tmp_path / "w1.dcm", pixels, photometric="MONOCHROME1", window=(2048, 1024)))
    )
    assert windowed[0, 60, 0] == 0 and windowed[0, 0, 0] == 255 and windowed[0, 20, 0] > windowed[0, 40, 0]


def test_dicom_is_sniffed_by_its_preamble_and_probed_from_the_header(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "scan.bin", _dicom_pixels())  # no DICOM suffix
    assert read_image(path).size == (64, 40)
    assert probe_size(path) == (64, 40)
    assert probe_size(_png(tmp_path / "p.png", _gray(33, 21))) == (33, 21)
    jpg = tmp_path / "p.jpg"
    _gray(70, 20).save(jpg, format="JPEG")
    assert probe_size(jpg) == (70, 20)


def _reason(path: Path) -> str:
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert info.value.path == path and str(path) in str(info.value)
    return info.value.reason


def test_read_errors_have_stable_reasons(tmp_path: Path) -> None:
    assert _reason(tmp_path / "missing.png") == "missing"
    (tmp_path / "dir.png").mkdir()
    assert _reason(tmp_path / "dir.png") == "missing"

    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(good, "PNG")
    (tmp_path / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    assert _reason(tmp_path / "truncated.png") == "corrupt"
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"nonsense" * 20)
    assert _reason(tmp_path / "garbage.png") == "corrupt"
    (tmp_path / "renamed.jpg").write_bytes(b"definitely not a jpeg" * 5)
    assert _reason(tmp_path / "renamed.jpg") == "corrupt"

    (tmp_path / "notes.txt").write_text("hello, not an image\n" * 10)
    assert _reason(tmp_path / "notes.txt") == "unsupported format"
    _gray().save(tmp_path / "x.bmp", format="BMP")
    assert _reason(tmp_path / "x.bmp") == "unsupported format"
    _gray().save(tmp_path / "x.gif", format="GIF")
    assert _reason(tmp_path / "x.gif") == "unsupported format"

    data = _dicom(tmp_path / "full.dcm", _dicom_pixels()).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 2000])
    assert _reason(tmp_path / "cut.dcm") == "corrupt"
    (tmp_path / "junk.dcm").write_bytes(b"junk" * 100)
    assert _reason(tmp_path / "junk.dcm") == "corrupt"


def test_probe_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as info:
        probe_size(tmp_path / "missing.dcm")
    assert info.value.reason == "missing"
    (tmp_path / "junk.png").write_bytes(b"junk" * 10)
    with pytest.raises(ImageError) as info:
        probe_size(tmp_path / "junk.png")
    assert info.value.reason == "corrupt"


# ---------------------------------------------------------------------------------------------
# decompression bombs and other hostile input
# ---------------------------------------------------------------------------------------------


def _refused(call, path: Path, *, reason: str = "oversized", **kwargs) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning (or any other) escapes either
        with pytest.raises(ImageError) as info:
            call(path, **kwargs)
    assert info.value.reason == reason and info.value.path == path and str(path) in str(info.value)
    return str(info.value)


def test_png_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = _bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    for call in (probe_size, read_image):
        message = _refused(call, bomb)
        assert "900,000,000 pixels" in message and f"{MAX_SOURCE_PIXELS:,}" in message and "fix:" in message
    # between Pillow's warning and error thresholds (Pillow would only warn, then decode 100M pixels)
    warn = _bomb_png(tmp_path / "warn.png", 10000, 10000)
    for call in (probe_size, read_image):
        assert "10000x10000 = 100,000,000 pixels" in _refused(call, warn)
    with pytest.raises(ImageError) as info:
        load_image(tmp_path, "warn.png")
    assert info.value.reason == "oversized"


def test_source_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = _png(tmp_path / "g.png", _gray(64, 48))
    assert "64x48 = 3,072 pixels, over the limit of 3,000" in _refused(
        read_image, path, max_source_pixels=3000
    )
    _refused(probe_size, path, max_source_pixels=3000)
    assert probe_size(path, max_source_pixels=3072) == (64, 48)
    with pytest.raises(ImageError, match="over the limit of 3,000") as info:
        load_image(tmp_path, "g.png", ImageBudget(max_source_pixels=3000))
    assert info.value.reason == "oversized"
    dicom = _dicom(tmp_path / "d.dcm", _dicom_pixels())  # 64x40 = 2,560 pixels
    assert "64x40 = 2,560 pixels" in _refused(read_image, dicom, max_source_pixels=2000)
    assert ImageBudget().max_source_pixels == MAX_SOURCE_PIXELS == 8192 * 8192
    with pytest.raises(ValueError, match="max_source_pixels must be a positive integer"):
        ImageBudget(max_source_pixels=0)


def test_dicom_declaring_a_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    # 15000 x 15000 declared, 64 bytes of pixel data: refused from the header, not as a short file
    huge = _deflated_dicom(tmp_path / "huge.dcm", 15000, 15000, pixels=bytes(64))
    for call in (probe_size, read_image):
        message = _refused(call, huge)
        assert "15000x15000 = 225,000,000 pixels" in message and f"{MAX_SOURCE_PIXELS:,}" in message
    # Rows x Columns x frames counts, whatever the transfer syntax
    frames = _deflated_dicom(tmp_path / "frames.dcm", 3000, 3000, pixels=bytes(64), frames=10)
    assert "3000x3000x10 frames = 90,000,000 pixels" in _refused(read_image, frames)
    _refused(probe_size, frames)
    plain = tmp_path / "plain.dcm"
    ds = pydicom.dcmread(_dicom(plain, _dicom_pixels()))
    ds.Rows, ds.Columns = 12000, 12000
    ds.save_as(plain, enforce_file_format=True)
    assert "12000x12000 = 144,000,000 pixels" in _refused(probe_size, plain)
    _refused(read_image, plain)
    # and the bytes the pixels decode to: 100x90 RGB at 32 bits is 108,000 bytes, over 8 per allowed pixel
    wide = _deflated_dicom(tmp_path / "wide.dcm", 90, 100, pixels=bytes(64), bits=32, samples=3)
    assert "108,000 bytes, over the limit of 80,000 bytes" in _refused(
        read_image, wide, max_source_pixels=10_000
    )


def _peak_bytes(call, *args, **kwargs) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(ImageError):
            call(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_deflated_dicom_bomb_is_never_inflated(tmp_path: Path) -> None:
    # the file: 15000x15000 declared and really present: ~440 KB on disk, 225 MB inflated
    bomb = _deflated_dicom(tmp_path / "bomb.dcm", 15000, 15000, zeros=15000 * 15000, bits=8)
    assert bomb.stat().st_size < 1_000_000
    for call in (probe_size, read_image):
        assert _peak_bytes(call, bomb) < 8 * 2**20, call.__name__
        _refused(call, bomb)
    # a small header hiding 64 MB of pixel data: the header passes, the pixel data is never inflated
    liar = _deflated_dicom(tmp_path / "liar.dcm", 40, 64, zeros=64 * 2**20)
    assert probe_size(liar) == (64, 40)
    assert _peak_bytes(read_image, liar) < 16 * 2**20
    assert "inflates to more than" in _refused(read_image, liar)


def test_deflated_dicom_decodes_like_the_uncompressed_one(tmp_path: Path) -> None:
    pixels = _dicom_pixels()
    path = _deflated_dicom(tmp_path / "deflated.dcm", 40, 64, pixels=pixels.astype("<u2").tobytes())
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert np.array_equal(pydicom.dcmread(path).pixel_array, pixels)  # a valid file, as pydicom reads it
    assert probe_size(path) == (64, 40)
    expected = np.asarray(read_image(_dicom(tmp_path / "plain.dcm", pixels)))
    assert np.array_equal(np.asarray(read_image(path)), expected)
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 40])
    assert _reason(tmp_path / "cut.dcm") == "corrupt"


def test_a_nul_byte_in_a_row_path_is_a_clear_error(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", _gray())
    for call in (resolve_under, load_image):
        with pytest.raises(ImageError, match="contains a NUL byte") as info:
            call(tmp_path, "a\0.png")
        assert info.value.reason == "invalid path" and "fix:" in str(info.value)


def test_image_error_reasons_are_closed() -> None:
    assert "undersized" in IMAGE_ERROR_REASONS
    with pytest.raises(ValueError, match="unknown ImageError reason"):
        ImageError("x", path=None, reason="weird")


# ---------------------------------------------------------------------------------------------
# load_image
# ---------------------------------------------------------------------------------------------


def test_load_image_resizes_to_smart_resize(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png", _gray(300, 200))
    image = load_image(tmp_path, "imgs/a.png")
    assert image.mode == "RGB" and image.size == (308, 196)  # smart_resize(200, 300) = (196, 308)
    big = load_image(tmp_path, "imgs/a.png", ImageBudget(min_pixels=56 * 56, max_pixels=100 * 100))
    assert big.size[0] * big.size[1] <= 100 * 100 and big.size[0] % 28 == 0
    _dicom(tmp_path / "imgs" / "scan.dcm", _dicom_pixels())
    assert load_image(tmp_path, "imgs/scan.dcm").size == (84, 56)  # 64x40 raised to min_pixels


def test_load_image_errors(tmp_path: Path) -> None:
    _png(tmp_path / "tiny.png", _gray(10, 10))
    with pytest.raises(ImageError, match="below the minimum side") as info:
        load_image(tmp_path, "tiny.png")
    assert info.value.reason == "undersized" and info.value.path == (tmp_path / "tiny.png").resolve()
    _png(tmp_path / "strip.png", _gray(6000, 28))
    with pytest.raises(ImageError, match=r"strip\.png") as info:
        load_image(tmp_path, "strip.png")
    assert info.value.reason == "aspect ratio"
    # ratio 148 is accepted by smart_resize, but the 28x5628 result would be refused by the processor
    _png(tmp_path / "narrow.png", _gray(5628, 38))
    with pytest.raises(ImageError, match=r"narrow\.png") as info:
        load_image(tmp_path, "narrow.png")
    assert info.value.reason == "aspect ratio"
    (tmp_path / "sub").mkdir()
    with pytest.raises(PathEscapeError):
        load_image(tmp_path / "sub", "../tiny.png")
    with pytest.raises(ImageError) as info:
        load_image(tmp_path, "absent.png")
    assert info.value.reason == "missing"


# ---------------------------------------------------------------------------------------------
# boxes and writing
# ---------------------------------------------------------------------------------------------


def test_transform_box_round_trip_and_clamping() -> None:
    rng = random.Random(0)
    for _ in range(200):
        ow, oh = rng.randint(50, 4000), rng.randint(50, 4000)
        rh, rw = smart_resize(oh, ow)
        x0, x1 = sorted(rng.uniform(0, ow) for _ in range(2))
        y0, y1 = sorted(rng.uniform(0, oh) for _ in range(2))
        box = Box("Nodule", x0, y0, x1, y1)
        there = transform_box(box, (ow, oh), (rw, rh))
        assert 0 <= there.x0 <= there.x1 <= rw and 0 <= there.y0 <= there.y1 <= rh
        back = transform_box(there, (rw, rh), (ow, oh))
        assert back.finding == "Nodule"
        assert (
            max(
                abs(a - b)
                for a, b in zip((back.x0, back.y0, back.x1, back.y1), (x0, y0, x1, y1), strict=True)
            )
            < 1e-6
        )

    clamped = transform_box(Box("Mass", -50, 20, 1200, 90), (1000, 500), (500, 250))
    assert (clamped.x0, clamped.y0, clamped.x1, clamped.y1) == (0.0, 10.0, 500.0, 45.0)
    flipped = transform_box(Box("Mass", 80, 90, 10, 20), (100, 100), (200, 200))
    assert (flipped.x0, flipped.y0, flipped.x1, flipped.y1) == (20.0, 40.0, 160.0, 180.0)
    with pytest.raises(ValueError, match="positive"):
        transform_box(clamped, (0, 10), (10, 10))


def test_box_to_qwen_gives_rounded_absolute_coordinates() -> None:
    box = transform_box(Box("Nodule", 100, 50, 300, 150), (1000, 500), (308, 168))
    assert box_to_qwen(box) == [31, 17, 92, 50]  # 30.8, 16.8, 92.4, 50.4
    assert all(isinstance(c, int) for c in box_to_qwen(box))


def test_save_normalised_round_trips(tmp_path: Path) -> None:
    gray_rgb = _gray().convert("RGB")
    path = save_normalised(gray_rgb, tmp_path / "out" / "g.png")
    with Image.open(path) as stored:
        assert stored.format == "PNG" and stored.mode == "L"  # greyscale radiographs are stored compactly
    assert np.array_equal(np.asarray(read_image(path)), np.asarray(gray_rgb))
    colour = Image.new("RGB", (20, 10), (1, 2, 3))
    save_normalised(colour, tmp_path / "out" / "c.png")
    assert read_image(tmp_path / "out" / "c.png").getpixel((0, 0)) == (1, 2, 3)
    assert sorted(os.listdir(tmp_path / "out")) == ["c.png", "g.png"]  # no temporary files left behind
    assert (tmp_path / "out" / "g.png").stat().st_mode & 0o044 == 0o044
    # writing the same image twice gives the same bytes
    first = path.read_bytes()
    save_normalised(gray_rgb, path)
    assert path.read_bytes() == first


def test_dicom_module_is_real(tmp_path: Path) -> None:
    """The fixture files are valid DICOM that pydicom reads back with the attributes we set."""
    ds = pydicom.dcmread(_dicom(tmp_path / "x.dcm", _dicom_pixels(), window=(2048, 1024)))
    assert ds.BitsStored == 12 and ds.PhotometricInterpretation == "MONOCHROME2" and ds.WindowWidth == 1024
