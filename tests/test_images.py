"""Tests of ``cxmind.data.images``: path safety, Qwen2.5-VL resize/token arithmetic, decoding, boxes."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

from cxmind.data.images import (
    IMAGE_ERROR_REASONS,
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
) -> Path:
    """A real Part-10 DICOM file: 16 bits allocated, 12 stored, unsigned, explicit VR little endian."""
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
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
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


def test_read_png_16bit_is_min_max_scaled(tmp_path: Path) -> None:
    arr = np.linspace(1000, 5000, 40 * 50).reshape(40, 50).astype(np.uint16)
    path = _png(tmp_path / "sixteen.png", Image.fromarray(arr))
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I")  # really stored as 16-bit
    out = np.asarray(read_image(path))[..., 0].astype(int)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel()) >= 0)  # monotone
    expected = np.rint((arr.astype(float) - 1000) / 4000 * 255)
    assert np.abs(out - expected).max() <= 1


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
