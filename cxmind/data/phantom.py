"""Procedural chest X-ray phantoms: a complete, label-consistent data source with no real images.

No real radiographs are needed to exercise the pipeline (build → validate → train → eval): phantoms are
CXR-like images whose findings are drawn on purpose, so the labels, boxes and report always agree with
the pixels and a small model can learn to see them (a blank-image control cannot).

An image is a dark background, a soft-tissue body, two lung fields with faint vessel markings, ribs,
clavicles, spine, mediastinum and heart. Findings:

* Cardiomegaly: cardiothoracic ratio 0.56–0.64 instead of 0.34–0.42.
* Pleural Effusion: dense fluid filling one or both lung bases, meniscus rising laterally.
* Pneumothorax: a dark apical/lateral rim without lung markings, a thin visceral pleural line.
* Nodule: one or two small (radius 2.5–3.8 % of the image), bright, round spots in a mid/upper zone.
* Consolidation: a large bright patchy area.
* Atelectasis: a dense plate-like band.
* Edema: bilateral perihilar haze and prominent vessels (diffuse: no box).
* Support Devices: endotracheal tube, sometimes a central line and ECG leads.

Randomness comes in independent streams: the *anatomy* seed (one per patient) fixes body geometry,
brightness and where each finding sits; the *study* seed fixes positioning, exposure and noise. Each
finding has its own stream, so adding a finding changes only its own region — the image of the same
seeds without it is identical elsewhere — and a patient's nodule stays where it was in the next study.

``phantom.csv`` layout (one row per study, UTF-8, comma separated, header first):

===========  =========================================================================================
image        image path relative to the dataset root, ``images/p00000/s0.png``
patient_id   ``p00000``
study_id     ``p00000_s0``
order        the study's index in its patient's sequence (0, 1, ...)
view         ``PA`` or ``AP``
width        image width in pixels
height       image height in pixels
positives    present findings, ``|``-joined, in label-space order (empty: No Finding)
negatives    absent findings of the label space, ``|``-joined (positives ∪ negatives = label space)
boxes        JSON list ``[{"finding": "Nodule", "box": [x0, y0, x1, y1]}, ...]`` in pixels
findings     report findings section
impression   report impression section
indication   report indication section
===========  =========================================================================================
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import tempfile
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cxmind.data.images import save_normalised
from cxmind.data.schema import Box, Report, Study
from cxmind.errors import MissingFileError, UserError
from cxmind.vocab import NO_FINDING, canonical

__all__ = [
    "PHANTOM_BOXED_FINDINGS",
    "PHANTOM_CSV",
    "PHANTOM_CSV_COLUMNS",
    "PHANTOM_FINDINGS",
    "PHANTOM_VIEWS",
    "PhantomSource",
    "phantom_report",
    "render_phantom",
    "write_phantom_dataset",
]

#: Findings a phantom can show (canonical ``cxmind.vocab`` names), in label-space order.
PHANTOM_FINDINGS: tuple[str, ...] = (
    "Cardiomegaly",
    "Pleural Effusion",
    "Pneumothorax",
    "Nodule",
    "Consolidation",
    "Atelectasis",
    "Edema",
    "Support Devices",
)
#: Findings drawn with bounding boxes (Edema is diffuse).
PHANTOM_BOXED_FINDINGS: tuple[str, ...] = tuple(f for f in PHANTOM_FINDINGS if f != "Edema")
PHANTOM_VIEWS: tuple[str, ...] = ("PA", "AP")
PHANTOM_CSV = "phantom.csv"
PHANTOM_CSV_COLUMNS: tuple[str, ...] = (
    "image",
    "patient_id",
    "study_id",
    "order",
    "view",
    "width",
    "height",
    "positives",
    "negatives",
    "boxes",
    "findings",
    "impression",
    "indication",
)

_MIN_SIZE = 32
_STREAM_STUDY = 1  # SeedSequence spawn keys: separate, stable random streams
_STREAM_ANATOMY = 2
_FINDING_KEY = {name: zlib.crc32(name.encode()) for name in PHANTOM_FINDINGS}
_HEART_COS, _HEART_SIN = float(np.cos(np.radians(18))), float(np.sin(np.radians(18)))


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lung:
    """One lung field in normalised image coordinates (0..1, y down).

    The shape is a half ellipse at the apex over straight lateral walls, closed below by a diaphragm
    dome that leaves sharp costophrenic angles. ``medial`` is +1 for the image-left lung (patient's
    right, mediastinum to its right) and -1 for the other.
    """

    cx: float
    cy: float
    a: float  # half width at the base
    b: float  # half height
    dome: float  # diaphragm dome height
    medial: int

    def scaled(self, f: float) -> _Lung:
        """The lung shrunk by ``f`` towards its medial-basal corner (a collapsed lung)."""
        return _Lung(
            cx=self.cx + self.medial * self.a * (1 - f),
            cy=self.cy + self.b * (1 - f),
            a=self.a * f,
            b=self.b * f,
            dome=self.dome * f,
            medial=self.medial,
        )

    def field(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Implicit shape function: ``<= 1`` inside the lung. ``u`` a row vector, ``v`` a column vector."""
        t = np.clip((v - (self.cy - self.b)) / (2 * self.b), 0, 1)
        x = (u - self.cx) / (self.a * (0.78 + 0.22 * t))
        x2 = x * x
        up = np.maximum(self.cy - v, 0) / self.b
        top = x2 + up * up
        bottom = (v - self.cy) / (self.b - self.dome * (1 - np.minimum(x2, 1)))
        return np.maximum(top, bottom)

    def contains(self, x: float, y: float) -> bool:
        return bool(self.field(np.float32(x), np.float32(y)) <= 1)

    def columns(self, size: int, margin: float = 0.02) -> slice:
        lo = int(max(0.0, (self.cx - self.a - margin) * size))
        hi = int(min(float(size), (self.cx + self.a + margin) * size + 1))
        return slice(lo, hi)


@dataclass(frozen=True)
class _Anatomy:
    lungs: tuple[_Lung, _Lung]  # image-left (patient right), image-right (patient left)
    spine_x: float
    heart_q: float  # position of the cardiothoracic ratio within its (normal or enlarged) range
    body_level: float
    lung_level: float
    heart_level: float
    bone_gain: float
    rib_spacing: float
    rib_curve: float
    rib_phase: float
    vessel_phase: float
    vessel_count: int
    texture: np.ndarray  # coarse grids, upsampled to the image
    vessel_grid: np.ndarray
    fine_grid: np.ndarray  # parenchymal mottling


def _anatomy(rng: np.random.Generator) -> _Anatomy:
    spine_x = 0.5 + rng.uniform(-0.012, 0.012)
    cy = 0.47 + rng.uniform(-0.02, 0.02)
    b = rng.uniform(0.32, 0.36)
    lungs = []
    for medial in (1, -1):
        lungs.append(
            _Lung(
                cx=spine_x - medial * rng.uniform(0.185, 0.205),
                cy=cy + rng.uniform(-0.01, 0.01),
                a=rng.uniform(0.155, 0.175),
                b=b + rng.uniform(-0.01, 0.01),
                dome=rng.uniform(0.05, 0.08),
                medial=medial,
            )
        )
    return _Anatomy(
        lungs=(lungs[0], lungs[1]),
        spine_x=spine_x,
        heart_q=float(rng.random()),
        body_level=rng.uniform(0.36, 0.46),
        lung_level=rng.uniform(0.17, 0.23),
        heart_level=rng.uniform(0.68, 0.76),
        bone_gain=rng.uniform(0.8, 1.2),
        rib_spacing=rng.uniform(0.068, 0.08),
        rib_curve=rng.uniform(0.9, 1.5),
        rib_phase=float(rng.random()),
        vessel_phase=float(rng.uniform(0, 2 * np.pi)),
        vessel_count=int(rng.integers(11, 16)),
        texture=rng.standard_normal((24, 24)).astype(np.float32),
        vessel_grid=rng.standard_normal((7, 7)).astype(np.float32),
        fine_grid=rng.standard_normal((56, 56)).astype(np.float32),
    )


def _heart(anatomy: _Anatomy, enlarged: bool) -> tuple[float, float, float, float]:
    """Heart ellipse ``(cx, cy, half width, half height)``; width = cardiothoracic ratio × thorax width."""
    right, left = anatomy.lungs
    thorax = (left.cx + left.a) - (right.cx - right.a)
    ctr = (0.56 if enlarged else 0.34) + 0.08 * anatomy.heart_q
    hw = ctr * thorax / 2
    hh = 0.6 * hw + 0.04
    return anatomy.spine_x + 0.42 * hw, _diaphragm(anatomy) - 0.4 * hh, hw, hh


def _diaphragm(anatomy: _Anatomy) -> float:
    """Height of the lower hemidiaphragm's dome, where the heart sits."""
    return max(lung.cy + lung.b - lung.dome for lung in anatomy.lungs)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """A smooth field: a coarse random grid resized bicubically to ``size``×``size``."""
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _mask_box(finding: str, mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> Box | None:
    """The pixel bounding box of a boolean mask (``offset`` = the mask's top-left corner), or None."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    oy, ox = offset
    return Box(
        finding, float(cols[0] + ox), float(rows[0] + oy), float(cols[-1] + 1 + ox), float(rows[-1] + 1 + oy)
    )


def _line_mask(size: int, lines: Sequence[tuple[Sequence[tuple[float, float]], float]]) -> np.ndarray:
    """Boolean mask of polylines ``(points in 0..1, width in 0..1)`` drawn with PIL."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for points, width in lines:
        xy = [(x * size, y * size) for x, y in points]
        draw.line(xy, fill=255, width=max(1, round(width * size)), joint="curve")
    return np.asarray(canvas) > 127


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _finding_rng(anatomy_seed: int, finding: str) -> np.random.Generator:
    return np.random.default_rng([anatomy_seed, _STREAM_ANATOMY, _FINDING_KEY[finding]])


def _spot_in_lung(
    rng: np.random.Generator, anatomy: _Anatomy, margin: float, avoid: Sequence[tuple[float, float]] = ()
) -> tuple[float, float] | None:
    """A point well inside a lung (safe from pneumothorax rims, effusions and an enlarged heart).

    ``margin`` is kept clear of the lung's edge, the mediastinum and the heart, and ``2 * margin`` of
    the points in ``avoid``. ``None`` if rejection sampling finds no such point (about 1% of lungs).
    """
    side = int(rng.integers(2))
    lung = anatomy.lungs[side]
    safe = lung.scaled(0.7)
    hx, hy, hw, hh = _heart(anatomy, enlarged=True)
    for _ in range(64):
        cx = rng.uniform(lung.cx - lung.a, lung.cx + lung.a)
        cy = rng.uniform(lung.cy - 0.45 * lung.b, lung.cy + 0.1 * lung.b - margin)
        in_heart = ((cx - hx) / (hw + margin)) ** 2 + ((cy - hy) / (hh + margin)) ** 2 <= 1
        clear_of_mediastinum = abs(cx - anatomy.spine_x) > 0.07 + margin
        fits = all(lung.contains(cx + dx, cy + dy) for dx, dy in ((margin, 0), (-margin, 0), (0, -margin)))
        apart = all((cx - ax) ** 2 + (cy - ay) ** 2 > (2 * margin) ** 2 for ax, ay in avoid)
        if safe.contains(cx, cy) and fits and clear_of_mediastinum and apart and not in_heart:
            return cx, cy
    return None


def _upper_zone(anatomy: _Anatomy) -> tuple[float, float]:
    """A fallback spot: mid upper zone of the image-left lung, inside every collapsed or wet lung."""
    lung = anatomy.lungs[0]
    return lung.cx, lung.cy - 0.3 * lung.b


def _normalise_findings(findings: Collection[str]) -> frozenset[str]:
    names = set()
    for finding in findings:
        name = canonical(finding)
        if name == NO_FINDING:
            continue
        if name not in PHANTOM_FINDINGS:
            raise UserError(f"phantoms cannot draw {finding!r}; choose from {PHANTOM_FINDINGS}")
        names.add(name)
    return frozenset(names)


def render_phantom(
    findings: Collection[str],
    *,
    seed: int,
    size: int = 256,
    view: str = "PA",
    anatomy_seed: int | None = None,
) -> tuple[Image.Image, list[Box]]:
    """A CXR-like RGB image showing ``findings``, and their boxes in its pixel frame.

    ``seed`` fixes positioning, exposure and noise; ``anatomy_seed`` (default: ``seed``) fixes the
    anatomy and where findings sit, so that studies of one patient share it. The same arguments give
    the same pixels. ``view`` "AP" projects the clavicles higher and the scapulae over the lungs.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < _MIN_SIZE:
        raise UserError(f"phantom size must be an integer >= {_MIN_SIZE}, got {size!r}")
    if view not in PHANTOM_VIEWS:
        raise UserError(f"phantom view must be one of {PHANTOM_VIEWS}, got {view!r}")
    present = _normalise_findings(findings)
    anatomy_seed = seed if anatomy_seed is None else anatomy_seed
    anatomy = _anatomy(np.random.default_rng([anatomy_seed, _STREAM_ANATOMY]))
    study = np.random.default_rng([seed, _STREAM_STUDY])
    shift_x, shift_y = study.uniform(-0.02, 0.02, size=2)
    gain, bias = study.uniform(0.9, 1.1), study.uniform(-0.03, 0.03)
    noise_sigma = study.uniform(0.008, 0.016)
    exposure = _upsample(study.standard_normal((6, 6)).astype(np.float32), size)
    noise = study.standard_normal((size, size), dtype=np.float32)

    pix = (np.arange(size, dtype=np.float32) + 0.5) / size
    u = (pix - np.float32(shift_x))[None, :]  # row vector: anatomy moves with the patient's position
    v = (pix - np.float32(shift_y))[:, None]
    boxes: list[Box] = []
    s = np.float32

    # --- body, lungs -------------------------------------------------------------------------
    body = ((u - 0.5) / 0.47) ** 4 + ((v - 0.62) / 0.64) ** 4 <= 1
    abdomen = np.clip((v - 0.74) / 0.08, 0, 1)
    img = np.where(body, s(anatomy.body_level) + 0.14 * abdomen, s(0.03)).astype(np.float32)

    texture = _upsample(anatomy.texture, size)
    # vessel markings: thin rays from each hilum, fading to the periphery
    hila_x = np.where(u < anatomy.spine_x, anatomy.lungs[0].cx + 0.09, anatomy.lungs[1].cx - 0.09)
    dx, dy = u - hila_x, v - (anatomy.lungs[0].cy - 0.03)
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    bend = _upsample(anatomy.vessel_grid, size)
    wave = 0.5 + 0.5 * np.cos(anatomy.vessel_count * theta + 1.6 * bend + anatomy.vessel_phase)
    wave *= wave
    wave *= wave
    vessels = wave * (0.7 + 0.3 * texture) * np.exp(-r / 0.22) * np.clip(r / 0.07 - 0.2, 0, 1)
    vessels += 0.6 * np.exp(-(r * r) / (2 * 0.028**2))  # hilar vessels
    if "Edema" in present:  # congested vessels and a perihilar "bat wing" haze
        vessels = vessels * 2.0 + 0.4 * np.exp(-(r * r) / (2 * 0.1**2))
    mottle = _upsample(anatomy.fine_grid, size)
    lung_val = s(anatomy.lung_level) + 0.025 * texture + 0.03 * mottle + 0.16 * vessels

    lung_mask = np.zeros((size, size), dtype=bool)
    rib_zone = np.zeros((size, size), dtype=bool)
    lung_fields: list[tuple[slice, np.ndarray]] = []
    for lung in anatomy.lungs:
        cols = lung.columns(size, margin=0.06)
        field = lung.field(u[:, cols], v)
        lung_fields.append((cols, field))
        lung_mask[:, cols] |= field <= 1
        rib_zone[:, cols] |= (field <= 1.5) & (v < lung.cy + lung.b + 0.01)

    hidden = np.zeros((size, size), dtype=bool)  # regions later layers cover (for honest boxes)
    local_masks: list[tuple[str, np.ndarray]] = []

    if "Consolidation" in present:
        rng = _finding_rng(anatomy_seed, "Consolidation")
        x, y = _spot_in_lung(rng, anatomy, margin=0.02) or _upper_zone(anatomy)
        rx, ry = rng.uniform(0.07, 0.095), rng.uniform(0.08, 0.11)
        patch_noise = _upsample(rng.standard_normal((10, 10)).astype(np.float32), size)
        d = np.sqrt(((u - x) / rx) ** 2 + ((v - y) / ry) ** 2)
        patch = np.clip(1.6 * (1 - d) + 0.35 * patch_noise, 0, 1) * lung_mask
        patch = np.where(patch > 0.15, patch, 0)  # a definite edge: the box holds all of it
        lung_val = lung_val + 0.42 * patch
        local_masks.append(("Consolidation", patch > 0))

    if "Nodule" in present:
        rng = _finding_rng(anatomy_seed, "Nodule")
        nodule = np.zeros((size, size), dtype=bool)
        placed: list[tuple[float, float]] = []
        for count in range(1 + int(rng.random() < 0.25)):
            radius = rng.uniform(0.025, 0.038)
            spot = _spot_in_lung(rng, anatomy, margin=radius + 0.01, avoid=placed)
            if spot is None and count:
                break  # no room for a second one
            x, y = spot or _upper_zone(anatomy)
            placed.append((x, y))
            d2 = ((u - x) ** 2 + (v - y) ** 2) / radius**2
            dome = np.sqrt(np.clip(1 - d2, 0, 1))
            lung_val = lung_val + 0.55 * dome
            disc = dome > 0.05
            nodule |= disc
            box = _mask_box("Nodule", disc)
            if box:
                boxes.append(box)
        local_masks.append(("Nodule", nodule))

    if "Atelectasis" in present:
        rng = _finding_rng(anatomy_seed, "Atelectasis")
        lung = anatomy.lungs[int(rng.integers(2))]
        y = lung.cy + lung.b * rng.uniform(-0.05, 0.15)
        x0, x1 = lung.cx - lung.medial * 0.3 * lung.a, lung.cx + lung.medial * 0.75 * lung.a
        tilt = rng.uniform(-0.04, 0.04)
        band = _line_mask(size, [([(x0 + shift_x, y + shift_y), (x1 + shift_x, y + tilt + shift_y)], 0.024)])
        band &= lung_mask
        lung_val = lung_val + 0.38 * band
        local_masks.append(("Atelectasis", band))

    if "Pneumothorax" in present:
        rng = _finding_rng(anatomy_seed, "Pneumothorax")
        side = int(rng.integers(2))
        lung = anatomy.lungs[side]
        collapsed = lung.scaled(rng.uniform(0.75, 0.83))
        cols, field = lung_fields[side]
        inner = collapsed.field(u[:, cols], v)
        upper = v < lung.cy + 0.35 * lung.b
        rim = (field <= 1) & (inner > 1) & upper
        delta = 2.5 / (collapsed.a * size)
        pleura = (inner <= 1) & (inner > 1 - delta) & upper & (field <= 1)
        region = lung_val[:, cols]
        ptx_level = s(anatomy.lung_level * 0.35)
        region = np.where(rim, ptx_level + 0.008 * texture[:, cols], region)
        region = np.where(pleura, s(anatomy.lung_level + 0.22), region)
        lung_val[:, cols] = region
        hidden[:, cols] |= rim
        box = _mask_box("Pneumothorax", rim | pleura, offset=(0, cols.start))
        if box:
            boxes.append(box)

    img = np.where(lung_mask, lung_val, img)

    # --- mediastinum, bones, heart -------------------------------------------------------------
    heart_x, heart_y, heart_w, heart_h = _heart(anatomy, enlarged="Cardiomegaly" in present)
    medi = (np.abs(u - anatomy.spine_x) < 0.058) & (v > 0.04) & (v < heart_y) & body
    img = np.where(medi, s(0.6), img)
    trachea = (np.abs(u - anatomy.spine_x) < 0.013) & (v > 0.02) & (v < 0.3)
    img = np.where(trachea, s(0.32), img)
    knob = ((u - anatomy.spine_x - 0.055) ** 2 + (v - 0.3) ** 2) < 0.032**2
    img = np.where(knob, s(0.62), img)

    spine = np.clip(1 - np.abs(u - anatomy.spine_x) / 0.034, 0, 1) * body
    img += anatomy.bone_gain * spine * (0.14 + 0.05 * np.cos((v / 0.046) * 2 * np.pi))
    thorax = rib_zone & (v > 0.08) & (np.abs(u - anatomy.spine_x) > 0.03) & body
    rib_phase = (v - anatomy.rib_curve * (u - anatomy.spine_x) ** 2) / anatomy.rib_spacing + anatomy.rib_phase
    rib = 0.5 + 0.5 * np.cos(2 * np.pi * rib_phase)
    rib *= rib
    img += (0.09 * anatomy.bone_gain) * rib * rib * thorax

    lift = 0.045 if view == "AP" else 0.0
    bones = []
    for sign in (-1, 1):
        inner_x, outer_x = anatomy.spine_x + sign * 0.04, anatomy.spine_x + sign * 0.33
        bones.append(([(inner_x, 0.165 - lift), (outer_x, 0.115 - lift * 1.6)], 0.022))
    bone_mask = _line_mask(size, [([(x + shift_x, y + shift_y) for x, y in pts], w) for pts, w in bones])
    img += 0.2 * bone_mask
    if view == "AP":  # scapulae projected over the lateral upper lungs
        scapulae = []
        for lung in anatomy.lungs:
            edge = lung.cx - lung.medial * 0.55 * lung.a
            pts = [(edge - lung.medial * 0.04, 0.16), (edge, 0.3), (edge - lung.medial * 0.05, 0.46)]
            scapulae.append(([(x + shift_x, y + shift_y) for x, y in pts], 0.012))
        img += 0.09 * _line_mask(size, scapulae)

    along = (u - heart_x) * _HEART_COS + (v - heart_y) * _HEART_SIN  # long axis tilted down to the apex
    across = (v - heart_y) * _HEART_COS - (u - heart_x) * _HEART_SIN
    heart = ((along / heart_w) ** 2 + (across / heart_h) ** 2 <= 1) & (v < _diaphragm(anatomy))
    img = np.where(heart, s(anatomy.heart_level) + 0.25 * (img - anatomy.body_level) * spine, img)
    hidden |= heart | medi | trachea | knob
    if "Cardiomegaly" in present:
        box = _mask_box("Cardiomegaly", heart & body)
        if box:
            boxes.append(box)

    # --- effusion over the bases --------------------------------------------------------------
    if "Pleural Effusion" in present:
        rng = _finding_rng(anatomy_seed, "Pleural Effusion")
        first = int(rng.integers(2))
        sides = (0, 1) if rng.random() < 0.3 else (first,)
        levels = rng.uniform(0.35, 0.6, size=2)
        meniscus = rng.uniform(0.35, 0.5, size=2)
        for side in sides:
            lung = anatomy.lungs[side]
            cols, field = lung_fields[side]
            lateral = np.clip((lung.cx - u[:, cols]) * lung.medial / lung.a, 0, 1)
            top = lung.cy + lung.b * (levels[side] - meniscus[side] * lateral * np.sqrt(lateral))
            depth = np.clip((v - top) / 0.06, 0, 1)
            fluid = (field <= 1) & (depth > 0)
            dense = s(0.5) + 0.2 * np.sqrt(depth)
            region = img[:, cols]
            img[:, cols] = np.where(fluid, np.maximum(region, dense), region)
            hidden[:, cols] |= fluid
            box = _mask_box("Pleural Effusion", fluid, offset=(0, cols.start))
            if box:
                boxes.append(box)

    for finding, mask in local_masks:
        if finding == "Nodule":
            continue  # one box per nodule, placed where no other layer hides it
        box = _mask_box(finding, mask & ~hidden)
        if box:
            boxes.append(box)

    img = img * gain + (bias + 0.02 * exposure)  # exposure; metal devices below saturate regardless

    # --- devices on top -----------------------------------------------------------------------
    if "Support Devices" in present:
        rng = _finding_rng(anatomy_seed, "Support Devices")
        tube_x = anatomy.spine_x + rng.uniform(-0.006, 0.006)
        parts = [([(tube_x, 0.0), (tube_x + rng.uniform(-0.01, 0.01), rng.uniform(0.24, 0.3))], 0.012)]
        if rng.random() < 0.6:
            side = 1 if rng.random() < 0.5 else -1
            sx = anatomy.spine_x
            pts = [
                (sx - side * 0.36, 0.17),
                (sx - side * 0.22, 0.2),
                (sx - side * 0.08, 0.27),
                (sx - side * 0.035, rng.uniform(0.38, 0.45)),
            ]
            parts.append((pts, 0.008))  # central venous line
        for _ in range(int(rng.integers(0, 3))):
            cx, cy = rng.uniform(0.12, 0.88), rng.uniform(0.2, 0.6)
            ring = [(cx + 0.02 * np.cos(t), cy + 0.02 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 13)]
            parts.append((ring, 0.007))  # ECG lead
        for pts, width in parts:  # one box per device
            mask = _line_mask(size, [([(x + shift_x, y + shift_y) for x, y in pts], width)])
            img = np.where(mask, s(1.0), img)
            box = _mask_box("Support Devices", mask)
            if box:
                boxes.append(box)

    # --- acquisition: exposure, blur, quantum noise ---------------------------------------------
    img8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    blurred = Image.fromarray(img8).filter(ImageFilter.GaussianBlur(radius=0.6 * size / 256))
    out = np.asarray(blurred, dtype=np.float32) + noise * (noise_sigma * 255)
    gray = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    boxes.sort(key=lambda b: (PHANTOM_FINDINGS.index(b.finding), b.x0, b.y0))
    return Image.fromarray(gray).convert("RGB"), boxes


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

_POSITIVE: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        "The heart is enlarged.",
        "Cardiomegaly is present.",
        "The cardiac silhouette is enlarged.",
        "There is moderate cardiomegaly.",
    ),
    "Pleural Effusion": (
        "There is a {side}pleural effusion.",
        "{Side}pleural effusion with blunting of the costophrenic angle.",
        "A {side}pleural effusion with a meniscus is seen.",
    ),
    "Pneumothorax": (
        "There is a {side}apical pneumothorax.",
        "{Side}pneumothorax with a visible pleural line.",
        "A {side}pneumothorax is seen, without lung markings peripherally.",
    ),
    "Nodule": (
        "A {side}lung nodule is seen.",
        "There is a small rounded nodule in the {side}lung.",
        "{Side}pulmonary nodule in the mid lung zone.",
    ),
    "Consolidation": (
        "There is consolidation in the {side}lung.",
        "Patchy {side}airspace consolidation.",
        "{Side}lung consolidation is present.",
    ),
    "Atelectasis": (
        "Plate-like atelectasis in the {side}lung.",
        "There is {side}linear atelectasis.",
        "{Side}subsegmental atelectasis.",
    ),
    "Edema": (
        "There is pulmonary edema.",
        "Perihilar haziness consistent with pulmonary edema.",
        "Interstitial edema with vascular congestion.",
    ),
    "Support Devices": (
        "An endotracheal tube is in place.",
        "Support devices are in place.",
        "Lines and tubes are present.",
    ),
}
_NEGATIVE: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("The heart size is normal.", "No cardiomegaly.", "Normal cardiac silhouette."),
    "Pleural Effusion": ("No pleural effusion.", "No effusion.", "No pleural effusions are seen."),
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "Nodule": ("No pulmonary nodules.", "No nodule is seen."),
    "Consolidation": ("No focal consolidation.", "No consolidation."),
    "Atelectasis": ("No atelectasis.",),
    "Edema": ("No pulmonary edema.", "No edema."),
    "Support Devices": ("No support devices.", "No lines or tubes."),
}
_IMPRESSION: dict[str, str] = {
    "Cardiomegaly": "cardiomegaly",
    "Pleural Effusion": "{side}pleural effusion",
    "Pneumothorax": "{side}pneumothorax",
    "Nodule": "{side}pulmonary nodule",
    "Consolidation": "{side}consolidation",
    "Atelectasis": "{side}atelectasis",
    "Edema": "pulmonary edema",
    "Support Devices": "support devices in place",
}
_NORMAL_IMPRESSION = (
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No acute cardiopulmonary process.",
)
_INDICATIONS = (
    "Shortness of breath.",
    "Cough.",
    "Chest pain.",
    "Fever and cough.",
    "Follow-up.",
    "Preoperative evaluation.",
    "Dyspnea.",
    "Routine examination.",
)
_SIDES = ("right", "left", "bilateral")


def _pick(rng: np.random.Generator | random.Random, options: Sequence[str]) -> str:
    return options[min(int(rng.random() * len(options)), len(options) - 1)]


def _fill(template: str, side: str | None) -> str:
    word = f"{side} " if side else ""
    text = template.replace("{side}", word).replace("{Side}", word.capitalize())
    return text[0].upper() + text[1:]


def phantom_report(
    positives: Collection[str],
    negatives: Collection[str],
    rng: np.random.Generator | random.Random,
    *,
    sides: Mapping[str, str] | None = None,
) -> Report:
    """A short report mentioning every positive and negating some negatives; wording drawn from ``rng``.

    ``sides`` optionally gives a finding's laterality ("right", "left" or "bilateral", the patient's
    side). Deterministic given the rng's state; works with ``numpy`` and ``random`` generators.
    """
    pos = [f for f in PHANTOM_FINDINGS if f in set(map(canonical, positives))]
    neg = [f for f in PHANTOM_FINDINGS if f in set(map(canonical, negatives))]
    unknown = {canonical(f) for f in (*positives, *negatives)} - set(PHANTOM_FINDINGS) - {NO_FINDING}
    if unknown:
        raise ValueError(f"phantom reports cover {PHANTOM_FINDINGS}; cannot describe {sorted(unknown)}")
    if set(pos) & set(neg):
        raise ValueError(f"findings both positive and negative: {sorted(set(pos) & set(neg))}")
    sides = dict(sides or {})
    for finding, side in sides.items():
        if side not in _SIDES:
            raise ValueError(f"side of {finding} must be one of {_SIDES}, got {side!r}")

    sentences = [_fill(_pick(rng, _POSITIVE[f]), sides.get(f)) for f in pos]
    said = [f for f in neg if rng.random() < 0.6]
    if neg and not said:
        said = [_pick(rng, neg)]
    sentences += [_pick(rng, _NEGATIVE[f]) for f in said]
    if pos:
        phrases = [_fill(_IMPRESSION[f], sides.get(f)) for f in pos]
        phrases = [phrases[0]] + [p[0].lower() + p[1:] for p in phrases[1:]]
        impression = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        impression += "."
    else:
        impression = _pick(rng, _NORMAL_IMPRESSION)
    return Report(findings=" ".join(sentences), impression=impression, indication=_pick(rng, _INDICATIONS))


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def _derive(*keys: int) -> int:
    """A stable 63-bit seed from integer keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0]) >> 1


def _sides(boxes: Sequence[Box], width: int) -> dict[str, str]:
    """Patient-side laterality of each boxed finding (image left is the patient's right)."""
    seen: dict[str, set[str]] = {}
    for box in boxes:
        if box.finding in ("Cardiomegaly", "Support Devices"):
            continue
        side = "right" if (box.x0 + box.x1) / 2 < width / 2 else "left"
        seen.setdefault(box.finding, set()).add(side)
    return {f: next(iter(s)) if len(s) == 1 else "bilateral" for f, s in seen.items()}


def _box_json(boxes: Sequence[Box]) -> str:
    def num(x: float) -> int | float:
        return int(x) if float(x).is_integer() else round(float(x), 2)

    items = [{"finding": b.finding, "box": [num(b.x0), num(b.y0), num(b.x1), num(b.y1)]} for b in boxes]
    return json.dumps(items, separators=(",", ":"))


def write_phantom_dataset(
    root: str | os.PathLike[str],
    *,
    n_patients: int = 50,
    studies_per_patient: tuple[int, int] = (1, 3),
    seed: int = 0,
    size: int = 256,
    findings: Sequence[str] = PHANTOM_FINDINGS,
    p_finding: float = 0.3,
    p_normal: float = 1 / 3,
    p_ap: float = 0.2,
) -> Path:
    """Write a phantom dataset under ``root`` (images + ``phantom.csv``) and return ``root``.

    Each patient has ``studies_per_patient`` (inclusive range) studies. A first study is normal with
    probability ``p_normal``; otherwise each finding is present independently with probability
    ``p_finding``. Each later study keeps its predecessor's findings or, with probability 1/2, adds or
    removes one (progression). Views are AP with probability ``p_ap``. The same arguments write
    byte-identical files; ``phantom.csv`` is written last, so its presence means a complete dataset.
    """
    label_space = tuple(dict.fromkeys(canonical(f) for f in findings))
    if not label_space or any(f not in PHANTOM_FINDINGS for f in label_space):
        raise UserError(f"findings must be a non-empty subset of {PHANTOM_FINDINGS}, got {tuple(findings)}")
    lo, hi = studies_per_patient
    if n_patients < 1 or not 1 <= lo <= hi:
        raise UserError(
            f"need n_patients >= 1 and 1 <= min <= max studies, got {n_patients} and {studies_per_patient}"
        )
    for name, p in (("p_finding", p_finding), ("p_normal", p_normal), ("p_ap", p_ap)):
        if not 0 <= p <= 1:
            raise UserError(f"{name} must be a probability in [0, 1], got {p}")

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    for patient in range(n_patients):
        plan = np.random.default_rng([seed, patient, 0])
        n_studies = int(plan.integers(lo, hi + 1))
        present = set() if plan.random() < p_normal else {f for f in label_space if plan.random() < p_finding}
        anatomy_seed = _derive(seed, patient, 1)
        patient_id = f"p{patient:05d}"
        for order in range(n_studies):
            if order > 0 and plan.random() < 0.5:
                present ^= {_pick(plan, label_space)}
            view = "AP" if plan.random() < p_ap else "PA"
            positives = tuple(f for f in label_space if f in present)
            negatives = tuple(f for f in label_space if f not in present)
            image, boxes = render_phantom(
                positives,
                seed=_derive(seed, patient, 2, order),
                size=size,
                view=view,
                anatomy_seed=anatomy_seed,
            )
            report = phantom_report(
                positives,
                negatives,
                np.random.default_rng([seed, patient, 3, order]),
                sides=_sides(boxes, size),
            )
            rel = f"images/{patient_id}/s{order}.png"
            save_normalised(image, root / rel)
            rows.append(
                [
                    rel,
                    patient_id,
                    f"{patient_id}_s{order}",
                    str(order),
                    view,
                    str(image.width),
                    str(image.height),
                    "|".join(positives),
                    "|".join(negatives),
                    _box_json(boxes),
                    report.findings,
                    report.impression,
                    report.indication,
                ]
            )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PHANTOM_CSV_COLUMNS)
    writer.writerows(rows)
    fd, tmp = tempfile.mkstemp(prefix=f".{PHANTOM_CSV}.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, root / PHANTOM_CSV)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return root


class PhantomSource:
    """Reads a phantom dataset written by :func:`write_phantom_dataset` as ``Study`` objects."""

    name = "phantom"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.csv_path = self.root / PHANTOM_CSV
        if not self.csv_path.is_file():
            raise MissingFileError(
                f"{self.csv_path} not found: {self.root} is not a phantom dataset; create one with "
                f"`cxmind.data.phantom.write_phantom_dataset({str(self.root)!r})`"
            )
        self._label_space: tuple[str, ...] | None = None

    def _rows(self) -> Iterator[tuple[int, dict[str, str]]]:
        with self.csv_path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in PHANTOM_CSV_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise UserError(
                    f"{self.csv_path}: missing columns {missing}; rewrite it with write_phantom_dataset"
                )
            yield from enumerate(reader, start=2)

    @property
    def label_space(self) -> tuple[str, ...]:
        """The findings every study is labelled for (positives ∪ negatives of each row)."""
        if self._label_space is None:
            names: set[str] = set()
            for _, row in self._rows():
                names = {n for n in (*row["positives"].split("|"), *row["negatives"].split("|")) if n}
                break
            self._label_space = tuple(f for f in PHANTOM_FINDINGS if f in names) + tuple(
                sorted(names - set(PHANTOM_FINDINGS))
            )
        return self._label_space

    def studies(self) -> Iterator[Study]:
        """Every study of ``phantom.csv``, in file order; image paths are relative to ``root``."""
        space = self.label_space
        for line, row in self._rows():
            try:
                positives = tuple(f for f in space if f in set(row["positives"].split("|")))
                stated = {n for n in (*row["positives"].split("|"), *row["negatives"].split("|")) if n}
                if stated != set(space):
                    raise ValueError(f"labels {sorted(stated)} differ from the label space {list(space)}")
                boxes = tuple(
                    Box(item["finding"], *(float(c) for c in item["box"]))
                    for item in json.loads(row["boxes"])
                )
                yield Study(
                    source=self.name,
                    study_id=row["study_id"],
                    patient_id=row["patient_id"],
                    images=(row["image"],),
                    positives=positives,
                    negatives=tuple(f for f in space if f not in positives),
                    normal=not positives,  # a phantom shows only what it was drawn with
                    label_space=(*space, NO_FINDING),  # a phantom is labelled whole
                    view=row["view"] or None,
                    image_size=(int(row["width"]), int(row["height"])),
                    boxes=boxes,
                    report=Report(row["findings"], row["impression"], row["indication"]),
                    order=int(row["order"]),
                    split=None,
                )
            except (ValueError, KeyError, TypeError) as err:
                raise UserError(
                    f"{self.csv_path}, line {line}: {err}; fix: rewrite it with write_phantom_dataset"
                ) from err
