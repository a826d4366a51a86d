"""Synthetic axial head-CT slices in Hounsfield units with exact hemorrhage masks.

Real pixel-labelled ICH data is scarce (our copy of CT-ICH has slice labels only), so the model is
pre-trained and smoke-tested on slices drawn here. Everything is generated in HU so that any window
can be applied afterwards; :func:`synthetic_batch` applies the window the shipped model sees
(:data:`ichseg.windowing.CT_ICH_BRAIN`).

Geometry lives in a head frame measured in millimetres: ``u`` runs to the image's right (the
patient's left, radiological convention), ``v`` runs posterior (down the image), and the skull
tables are radial functions of the polar angle ``theta = atan2(v, u)`` (``-pi/2`` anterior). That
makes the extra-axial bleeds exact: an epidural or subdural is the band between the inner table and
the inner table minus a thickness profile over an arc. The head frame is rotated (tilt) and shifted
(off-centre) into the image; the scanner's head rest and gravity (fluid levels) stay in image axes.

Only ``rng`` is used for randomness, so a seed reproduces a slice exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, cast

import cv2
import numpy as np

from ichseg import model_metadata
from ichseg.windowing import CT_ICH_BRAIN, Window, apply_window

Subtype = Literal["epidural", "subdural", "intraparenchymal", "intraventricular", "subarachnoid"]
SUBTYPES = cast(tuple[Subtype, ...], model_metadata.SUBTYPES)
"""Hemorrhage subtypes, in the order used for labels and per-subtype masks (the model's order)."""

MIN_SIZE = 64

# Relative frequency of each subtype when drawn at random: near-uniform so the model sees every
# shape, with intraventricular a little rarer (it needs a ventricle level).
_SUBTYPE_WEIGHTS = np.array([0.2, 0.24, 0.24, 0.14, 0.18])

_N_ANGLES = 2048
_TAU = 2.0 * math.pi
_ANGLES = np.linspace(-math.pi, math.pi, _N_ANGLES, endpoint=False)
_COS_ANGLES = np.cos(_ANGLES)
_SIN_ANGLES = np.sin(_ANGLES)
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel accurate drawing
_ONE = float(1 << _SHIFT)

AIR_HU = -1000.0


@dataclass(frozen=True, eq=False)
class SyntheticSlice:
    """One generated slice. Masks are exact: they mark where blood was painted inside the skull."""

    hu: np.ndarray
    """(H, W) float32 Hounsfield units, blurred and noisy like a reconstructed CT slice."""
    mask: np.ndarray
    """(H, W) bool, union of all bleeds."""
    subtype_masks: dict[str, np.ndarray]
    """One (H, W) bool mask per name in :data:`SUBTYPES` (all keys present; masks are disjoint)."""
    subtypes: tuple[str, ...]
    """Subtypes present (non-empty mask), in :data:`SUBTYPES` order; empty for a negative slice."""
    anatomy: dict[str, np.ndarray]
    """(H, W) bool masks: ``head``, ``skull``, ``intracranial`` (inside the inner table, brain-side
    of any skull-base bone), ``ventricles``, ``calcification`` (bright, not blood). For tests and
    debugging."""
    densities: dict[str, float]
    """Nominal HU painted for each present subtype, before texture, blur and noise: acute ~58-85,
    subacute ~42-58, CSF-diluted ~38-52, chronic subdural ~18-32 (hypodense to brain)."""
    mm_per_pixel: float
    level: float
    """Axial level in [0, 1]: ~0.1 skull base, ~0.5 lateral ventricles, 1 vertex."""


def random_subtypes(rng: np.random.Generator) -> tuple[str, ...]:
    """Draw a plausible set of 1-3 coexisting subtypes for a positive slice."""
    count = int(rng.choice([1, 2, 3], p=[0.65, 0.25, 0.10]))
    picked = rng.choice(len(SUBTYPES), size=count, replace=False, p=_SUBTYPE_WEIGHTS)
    return tuple(SUBTYPES[i] for i in sorted(int(i) for i in picked))


def synthetic_slice(rng: np.random.Generator, size: int = 256, subtypes: Sequence[str] | None = None) -> SyntheticSlice:
    """Generate one slice of ``size`` x ``size`` pixels.

    ``subtypes=None`` draws a negative (half the time) or a random positive; an empty sequence
    asks for a negative; otherwise every listed subtype is drawn (and guaranteed non-empty).
    """
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, got {size}")
    if subtypes is None:
        wanted: tuple[str, ...] = random_subtypes(rng) if rng.random() < 0.5 else ()
    else:
        unknown = sorted(set(subtypes) - set(SUBTYPES))
        if unknown:
            raise ValueError(f"unknown subtype(s) {unknown}; choose from {', '.join(SUBTYPES)}")
        wanted = tuple(s for s in SUBTYPES if s in set(subtypes))
    result = _generate(rng, size, wanted)
    # A tiny bleed can vanish entirely when clipped to its compartment: draw again (rare).
    for _ in range(10):
        if set(wanted) <= set(result.subtypes):
            break
        result = _generate(rng, size, wanted)
    return result


def synthetic_batch(
    rng: np.random.Generator,
    n: int,
    size: int = 256,
    positive_fraction: float = 0.5,
    window: Window = CT_ICH_BRAIN,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` windowed slices: ``(images (n, size, size) uint8, masks (n, size, size) bool)``.

    Exactly ``round(n * positive_fraction)`` slices hold hemorrhage, in random order.
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    positives = np.zeros(n, dtype=bool)
    positives[: round(n * positive_fraction)] = True
    positives = rng.permutation(positives)
    images = np.empty((n, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    for i, positive in enumerate(positives):
        item = synthetic_slice(rng, size, random_subtypes(rng) if positive else ())
        images[i] = apply_window(item.hu, window)
        masks[i] = item.mask
    return images, masks


# --------------------------------------------------------------------------------------------
# Geometry helpers


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def _periodic(rng: np.random.Generator, kmin: int, kmax: int, amp: float, decay: float = 1.0) -> np.ndarray:
    """A smooth random function of the angle (a random Fourier series over ``_ANGLES``)."""
    k = np.arange(kmin, kmax + 1, dtype=np.float64)
    coeff = rng.normal(0.0, amp, k.size) / k**decay
    phase = rng.uniform(0.0, _TAU, k.size)
    # sum_k coeff_k cos(k theta + phase_k), evaluated for all angles at once by an inverse FFT.
    spectrum = np.zeros(_N_ANGLES // 2 + 1, dtype=np.complex128)
    spectrum[kmin : kmax + 1] = coeff * np.exp(1j * phase) * (_N_ANGLES / 2)
    return np.fft.irfft(spectrum, _N_ANGLES)


def _wrap(angle: np.ndarray | float) -> np.ndarray:
    """Angle difference folded into [-pi, pi)."""
    return (np.asarray(angle) + math.pi) % _TAU - math.pi


def _angle_bin(angle: np.ndarray | float) -> int | np.ndarray:
    """Index into the angle tables (``_ANGLES``) nearest to ``angle`` (radians, any turn)."""
    index = np.rint((np.asarray(angle) + math.pi) * (_N_ANGLES / _TAU)).astype(np.intp) % _N_ANGLES
    return int(index) if index.ndim == 0 else index


def _arc_profile(center: float, half_width: float) -> np.ndarray:
    """Position along an arc in [-1, 1] for angles inside it, NaN outside."""
    x = _wrap(_ANGLES - center) / half_width
    return np.where(np.abs(x) < 1.0, x, np.nan)


def _low_freq(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    """Smooth random field: a coarse Gaussian grid upsampled (bicubic to a quarter size, then
    bilinear, which is as smooth at this scale and much cheaper than bicubic at full size)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32) * np.float32(amp)
    quarter = max(cells, size // 4)
    mid = cv2.resize(coarse, (quarter, quarter), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(mid, (size, size), interpolation=cv2.INTER_LINEAR)


class _Frame:
    """Head frame (mm) <-> image pixels, and per-pixel polar coordinates."""

    def __init__(self, size: int, mm_per_px: float, cx: float, cy: float, tilt: float) -> None:
        self.size = size
        self.ppm = 1.0 / mm_per_px
        self.cx, self.cy = cx, cy
        self.cos, self.sin = math.cos(tilt), math.sin(tilt)
        self.tilt_deg = math.degrees(tilt)
        # Image x, y = offset + linear @ (u, v): a rotation by the tilt and a mm -> px scale.
        self._linear = self.ppm * np.array([[self.cos, -self.sin], [self.sin, self.cos]])
        self._offset = np.array([cx, cy])
        ys, xs = _pixel_grid(size)
        dx, dy = xs - np.float32(cx), ys - np.float32(cy)
        c, s, k = np.float32(self.cos), np.float32(self.sin), np.float32(mm_per_px)
        u = (c * dx + s * dy) * k
        v = (c * dy - s * dx) * k
        # cv2.cartToPolar is ~30x faster than arctan2 + hypot and accurate to ~0.01 degree.
        self.rho, theta = cv2.cartToPolar(u, v)
        self.aidx = np.rint((theta + np.float32(math.pi)) * np.float32(_N_ANGLES / _TAU)).astype(np.intp) % _N_ANGLES

    def radial(self, table: np.ndarray) -> np.ndarray:
        """Per-pixel float32 value of a table over ``_ANGLES`` (e.g. a radius, in mm)."""
        return table.astype(np.float32)[self.aidx]

    def px(self, uv: np.ndarray) -> np.ndarray:
        """(K, 2) head-frame mm -> (K, 2) image x, y."""
        return np.asarray(uv, dtype=np.float64).reshape(-1, 2) @ self._linear.T + self._offset

    def fixed(self, uv: np.ndarray) -> np.ndarray:
        return np.rint(self.px(uv) * _ONE).astype(np.int32)

    def discs(self, layer: np.ndarray, centers: np.ndarray, radii_mm: np.ndarray, value: int = 1) -> None:
        """Many filled discs (one coordinate transform for all of them)."""
        pts = self.fixed(centers)
        radii = np.maximum(int(_ONE * 0.75), np.rint(np.asarray(radii_mm) * self.ppm * _ONE)).astype(int)
        for (x, y), r in zip(pts.tolist(), radii.tolist(), strict=True):
            cv2.circle(layer, (x, y), r, value, -1, cv2.LINE_8, _SHIFT)

    def new_layer(self) -> np.ndarray:
        return np.zeros((self.size, self.size), dtype=np.uint8)

    def thickness(self, width_mm: float, min_px: int = 1) -> int:
        """Line thickness in whole pixels (what cv2 accepts)."""
        return max(min_px, round(width_mm * self.ppm))

    def polyline(self, layer: np.ndarray, uv: np.ndarray, width_mm: float, min_px: int = 1) -> None:
        cv2.polylines(layer, [self.fixed(uv)], False, 1, self.thickness(width_mm, min_px), cv2.LINE_8, _SHIFT)

    def polygon(self, layer: np.ndarray, uv: np.ndarray, value: int = 1) -> None:
        cv2.fillPoly(layer, [self.fixed(uv)], value, cv2.LINE_8, _SHIFT)

    def disc(self, layer: np.ndarray, center: Sequence[float], radius_mm: float, value: int = 1) -> None:
        c = self.fixed(np.asarray(center))[0]
        r = max(int(_ONE * 0.75), round(radius_mm * self.ppm * _ONE))
        cv2.circle(layer, (int(c[0]), int(c[1])), r, value, -1, cv2.LINE_8, _SHIFT)

    def ellipse(
        self, layer: np.ndarray, center: Sequence[float], semi_uv: Sequence[float], angle: float, value: int = 1
    ) -> None:
        """Filled ellipse; ``angle`` (radians) turns its ``u`` axis within the head frame."""
        c = self.fixed(np.asarray(center))[0]
        axes = tuple(max(int(_ONE * 0.75), round(a * self.ppm * _ONE)) for a in semi_uv)
        cv2.ellipse(
            layer,
            (int(c[0]), int(c[1])),
            axes,
            self.tilt_deg + math.degrees(angle),
            0,
            360,
            value,
            -1,
            cv2.LINE_8,
            _SHIFT,
        )


def _blob_outline(rng: np.random.Generator, center: np.ndarray, radius: float, lumpiness: float) -> np.ndarray:
    """Closed irregular outline (K, 2) in mm around ``center``: a radius with random harmonics."""
    alpha = np.linspace(0.0, _TAU, 48, endpoint=False)
    k = np.arange(2, 7)
    coeff = rng.normal(0.0, lumpiness, k.size) / k**0.7
    phase = rng.uniform(0.0, _TAU, k.size)
    r = radius * (1.0 + (coeff[:, None] * np.cos(k[:, None] * alpha[None, :] + phase[:, None])).sum(axis=0))
    r = np.maximum(r, 0.35 * radius)
    stretch, turn = rng.uniform(0.6, 1.0), rng.uniform(0.0, _TAU)
    x, y = r * np.cos(alpha), r * np.sin(alpha) * stretch
    ct, st = math.cos(turn), math.sin(turn)
    return np.stack([center[0] + ct * x - st * y, center[1] + st * x + ct * y], axis=1)


# --------------------------------------------------------------------------------------------
# The generator: a fixed sequence of phases. Each phase draws from ``rng`` in a fixed order, so
# reordering phases (or draws within one) changes every slice for a given seed.


def _generate(rng: np.random.Generator, size: int, wanted: tuple[str, ...]) -> SyntheticSlice:
    """Draw one slice holding exactly the ``wanted`` subtypes (any of them may come out empty)."""
    mm_per_px = rng.uniform(190.0, 265.0) / size  # field of view 19-27 cm
    shape = _draw_head_shape(rng, wanted, mm_per_px)
    frame = _place_in_image(rng, size, mm_per_px)
    comp = _compartments(frame, shape)
    hu = _paint_scalp_and_skull(rng, frame, shape, comp)
    _add_skull_base(rng, frame, shape, comp, hu)

    sah_sector = _plan_subarachnoid(rng, wanted)
    sulci = _draw_sulci(rng, frame, shape, sah_sector)
    csf_hu = _paint_parenchyma(rng, frame, shape, comp, sulci.folds, hu)
    cistern = _draw_cisterns(rng, frame, shape)
    ventricles = _draw_ventricles(rng, frame, shape, comp)
    midline = _draw_midline(rng, frame, shape, comp, ventricles)
    brain = _Brain(sulci, cistern, ventricles, midline)
    _paint_csf(rng, comp, brain, csf_hu, shape.atrophy, hu)
    calc_mask = _paint_calcifications(rng, frame, shape, comp, brain, hu)

    label, densities = _paint_bleeds(rng, wanted, frame, shape, comp, brain, sah_sector, hu)
    _add_head_rest(rng, frame, comp.head, hu)
    hu = _blur_and_noise(rng, frame, hu)
    return _assemble(hu, label, densities, comp, ventricles.mask, calc_mask, mm_per_px, shape.level)


# --------------------------------------------------------------------------------------------
# State handed from phase to phase


@dataclass(frozen=True, eq=False)
class _Shape:
    """Head and extra-axial bleed geometry in the head frame (mm): tables are indexed like ``_ANGLES``."""

    level: float
    """Axial level in [0, 1], as in :attr:`SyntheticSlice.level`."""
    a: float
    """Left-right semi-axis of the inner table."""
    b: float
    """Antero-posterior semi-axis of the inner table."""
    atrophy: float
    """0-1: widens the CSF spaces (sulci, extra-axial CSF, ventricles)."""
    r_in: np.ndarray
    """Inner table radius."""
    r_out: np.ndarray
    """Outer table radius."""
    scalp: np.ndarray
    """Soft tissue over the outer table, including any swelling over a bleed."""
    r_brain: np.ndarray
    """Brain surface radius: inside the CSF gap, or pushed in by an extra-axial bleed."""
    d_edh: np.ndarray
    """Epidural thickness against the inner table (zero where there is none)."""
    d_sdh: np.ndarray
    """Subdural thickness inside the epidural (zero where there is none)."""
    d_extra: np.ndarray
    """Both together."""
    arcs: list[tuple[float, float]]
    """(centre angle, half width) of each extra-axial bleed: epidural first, then subdural."""
    midline_shift: float
    """Along ``u``, away from the bleeds."""

    @property
    def r_scalp(self) -> np.ndarray:
        """Skin surface radius."""
        return self.r_out + self.scalp

    @property
    def front_v(self) -> float:
        """``v`` of the inner table straight ahead (negative: anterior)."""
        return -float(self.r_in[_N_ANGLES // 4])

    @property
    def back_v(self) -> float:
        """``v`` of the inner table straight behind."""
        return float(self.r_in[3 * _N_ANGLES // 4])


@dataclass(eq=False)
class _Compartments:
    """Per-pixel radii (mm, float32) and compartment masks. The skull base and a fracture over an
    epidural edit the masks in place, so later phases see the final compartments."""

    rin: np.ndarray
    rout: np.ndarray
    rbrain: np.ndarray
    head: np.ndarray
    skull: np.ndarray
    intracranial: np.ndarray
    parenchyma: np.ndarray


@dataclass(frozen=True, eq=False)
class _Sulci:
    """Sulci as random walks inward from the brain surface."""

    lines: list[tuple[float, np.ndarray]]
    """(surface angle, fixed-point pixel polyline) per sulcus."""
    folds: np.ndarray
    """Layer with every fold, thin: the cortex lines each of them."""
    csf: np.ndarray
    """Layer with the folds wide enough to show CSF."""


@dataclass(frozen=True, eq=False)
class _Ventricles:
    """Ventricular system at this level (``mask`` is empty outside the ventricle levels)."""

    present: bool
    mask: np.ndarray
    atria: list[np.ndarray]
    """Head-frame centre of each lateral ventricle's atrium (choroid plexus sits there)."""
    front: float
    """``v`` where the frontal horns end (or a stand-in without ventricles), which stops the falx."""
    back: float
    """``v`` where the atria end (or a stand-in), which stops the falx."""


@dataclass(frozen=True, eq=False)
class _Midline:
    """Interhemispheric fissure with the falx in it, bowed by any midline shift."""

    fissure: np.ndarray
    falx_mask: np.ndarray
    u: np.ndarray
    """Head-frame ``u`` of the midline at 32 points from front to back."""
    v: np.ndarray


@dataclass(frozen=True, eq=False)
class _Brain:
    """The brain's CSF-bearing structures, where subarachnoid and intraventricular blood can go."""

    sulci: _Sulci
    cistern: np.ndarray
    ventricles: _Ventricles
    midline: _Midline


# --------------------------------------------------------------------------------------------
# Phases: head shape (mm) and its placement in the image


def _draw_head_shape(rng: np.random.Generator, wanted: tuple[str, ...], mm_per_px: float) -> _Shape:
    """Level, skull tables, scalp, CSF gap and the extra-axial bleeds with their mass effect."""
    u_ = rng.uniform
    level = u_(0.38, 0.58) if "intraventricular" in wanted else u_(0.08, 1.0)
    a, b, r_in = _draw_inner_table(rng, level)
    r_out = _draw_outer_table(rng, level, r_in)
    scalp = _draw_scalp(rng, level)
    atrophy = u_(0.0, 1.0)  # drives the CSF spaces: sulci, extra-axial CSF, ventricle size
    gap = np.maximum(0.0, (0.3 + 2.2 * atrophy) * (1.0 + _periodic(rng, 1, 12, 0.35)))
    # Extra-axial bleeds at least ~3 pixels thick: thinner ones vanish into the bone's partial volume.
    d_edh, d_sdh, arcs = _plan_extra_axial(rng, wanted, a, min_bleed_mm=3.0 * mm_per_px)
    d_extra = d_edh + d_sdh
    return _Shape(
        level=level,
        a=a,
        b=b,
        atrophy=atrophy,
        r_in=r_in,
        r_out=r_out,
        scalp=_swell_scalp(rng, scalp, arcs),
        r_brain=r_in - np.maximum(gap, d_extra),  # the brain is pushed in by an extra-axial bleed
        d_edh=d_edh,
        d_sdh=d_sdh,
        d_extra=d_extra,
        arcs=arcs,
        midline_shift=_midline_shift(arcs, d_extra),
    )


def _draw_inner_table(rng: np.random.Generator, level: float) -> tuple[float, float, np.ndarray]:
    """Semi-axes ``a`` (left-right), ``b`` (antero-posterior) and the inner table radius table."""
    u_ = rng.uniform
    # The cranial vault is a dome: the cross-section shrinks toward the vertex (and a little at the base).
    shrink = 1.0 if level <= 0.62 else math.sqrt(max(0.0, 1.0 - ((level - 0.62) / 0.55) ** 2))
    shrink *= 1.0 - 0.4 * max(0.0, 0.25 - level)
    a = u_(58.0, 70.0) * shrink
    b = max(a * 1.08, u_(74.0, 90.0) * shrink)
    ellipse_r = a * b / np.sqrt((b * _COS_ANGLES) ** 2 + (a * _SIN_ANGLES) ** 2)
    egg = u_(0.0, 0.05) * _SIN_ANGLES  # occiput a little broader than the forehead
    return a, b, ellipse_r * (1.0 + egg + _periodic(rng, 2, 8, 0.012))


def _draw_outer_table(rng: np.random.Generator, level: float, r_in: np.ndarray) -> np.ndarray:
    """Outer table radius: the inner table plus a bone thickness, thicker front and back."""
    thickness = rng.uniform(3.5, 6.5) * (1.0 + 0.3 * _SIN_ANGLES**2) * (1.0 + _periodic(rng, 1, 10, 0.12))
    if level > 0.8:  # the dome is cut obliquely near the vertex: the bone looks thicker
        thickness *= 1.0 + 2.0 * (level - 0.8)
    return r_in + np.maximum(thickness, 2.5)


def _draw_scalp(rng: np.random.Generator, level: float) -> np.ndarray:
    """Soft-tissue thickness over the outer table."""
    scalp = rng.uniform(2.5, 5.0) * (1.0 + _periodic(rng, 1, 6, 0.15))
    if level < 0.62:  # temporalis muscles thicken the soft tissue at the sides
        scalp += rng.uniform(2.0, 7.0) * _COS_ANGLES**4
    return np.maximum(scalp, 1.5)


def _plan_extra_axial(
    rng: np.random.Generator, wanted: tuple[str, ...], a: float, min_bleed_mm: float
) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """Epidural and subdural thickness profiles over the angle (mm) and the arcs they cover."""
    u_ = rng.uniform
    d_edh = np.zeros(_N_ANGLES)
    d_sdh = np.zeros(_N_ANGLES)
    arcs: list[tuple[float, float]] = []
    if "epidural" in wanted:
        center, half = u_(-math.pi, math.pi), u_(0.22, 0.5)  # short arc: sutures bound it
        x = _arc_profile(center, half)
        peak = max(min_bleed_mm, min(u_(5.0, 22.0), 0.3 * a))
        d_edh = np.nan_to_num(peak * (1.0 - x**2) ** u_(0.5, 0.8) * (1.0 + _periodic(rng, 3, 9, 0.04)))
        arcs.append((center, half))
    if "subdural" in wanted:
        side = 0.0 if rng.random() < 0.5 else math.pi  # one hemisphere: the falx stops it at the midline
        offset = float(np.clip(rng.normal(0.0, 0.45), -0.8, 0.8))
        half = max(0.6, min(u_(0.7, 1.35), math.pi / 2 - 0.1 - abs(offset)))
        center = side + offset
        x = _arc_profile(center, half)
        peak = max(min_bleed_mm, min(u_(2.5, 14.0), 0.2 * a, 9.0 * half))  # a crescent: long for its thickness
        d_sdh = np.nan_to_num(
            peak * (1.0 - np.abs(x) ** u_(1.5, 3.0)) ** u_(0.6, 1.1) * (1.0 + _periodic(rng, 3, 12, 0.05))
        )
        arcs.append((center, half))
    return d_edh, np.maximum(d_sdh, 0.0), arcs


def _swell_scalp(rng: np.random.Generator, scalp: np.ndarray, arcs: list[tuple[float, float]]) -> np.ndarray:
    """Soft-tissue swelling over the impact site, common with traumatic extra-axial bleeds."""
    for center, half in arcs:
        if rng.random() < 0.5:
            x = _arc_profile(center + rng.normal(0.0, 0.2), half * rng.uniform(0.5, 1.2))
            scalp = scalp + np.nan_to_num(rng.uniform(2.0, 9.0) * (1.0 - x**2))
    return scalp


def _midline_shift(arcs: list[tuple[float, float]], d_extra: np.ndarray) -> float:
    """Midline shift (mm along ``u``) away from a large lateral bleed: mass effect."""
    shift = 0.0
    for center, _half in arcs:
        shift -= 0.35 * d_extra[_angle_bin(center)] * math.cos(center)
    return float(np.clip(shift, -12.0, 12.0))


def _place_in_image(rng: np.random.Generator, size: int, mm_per_px: float) -> _Frame:
    """Shift the head off-centre and tilt it, as a patient lies in the scanner."""
    offset_px = rng.normal(0.0, 0.035 * size, 2)
    return _Frame(size, mm_per_px, size / 2 + offset_px[0], size / 2 + offset_px[1], rng.normal(0.0, 0.12))


def _compartments(frame: _Frame, shape: _Shape) -> _Compartments:
    """Rasterise the radial tables: skin, skull, intracranial space and brain per pixel."""
    rho = frame.rho
    rin, rout, rbrain = frame.radial(shape.r_in), frame.radial(shape.r_out), frame.radial(shape.r_brain)
    intracranial = rho < rin
    return _Compartments(
        rin=rin,
        rout=rout,
        rbrain=rbrain,
        head=rho < frame.radial(shape.r_scalp),
        skull=~intracranial & (rho < rout),
        intracranial=intracranial,
        parenchyma=rho < rbrain,
    )


# --------------------------------------------------------------------------------------------
# Phases: soft tissue and bone


def _paint_scalp_and_skull(rng: np.random.Generator, frame: _Frame, shape: _Shape, comp: _Compartments) -> np.ndarray:
    """A new HU image: air, scalp (sometimes with a fat band) and the skull's tables and diploe."""
    u_ = rng.uniform
    rho = frame.rho
    hu = np.full((frame.size, frame.size), AIR_HU, dtype=np.float32)
    hu[comp.head] = u_(25.0, 55.0)
    if rng.random() < 0.6:  # subcutaneous fat: a dark band in the scalp
        fat_in = frame.radial(shape.r_out + shape.scalp * u_(0.25, 0.45))
        fat_out = frame.radial(shape.r_out + shape.scalp * u_(0.6, 0.8))
        hu[comp.head & (rho >= fat_in) & (rho < fat_out)] = u_(-100.0, -40.0)
    frac = np.clip((rho - comp.rin) / np.maximum(comp.rout - comp.rin, 1e-3), 0.0, 1.0)
    table_hu, diploe_hu = u_(1150.0, 1500.0), u_(700.0, 900.0)
    bone_hu = table_hu - (table_hu - diploe_hu) * np.sin(np.float32(math.pi) * frac) ** 2
    return np.where(comp.skull, bone_hu, hu)


def _add_skull_base(
    rng: np.random.Generator, frame: _Frame, shape: _Shape, comp: _Compartments, hu: np.ndarray
) -> None:
    """Low levels: petrous ridges, anterior fossa floor, sinus/mastoid air. Moves bone from the
    intracranial space and brain into the skull."""
    inner_bone = frame.new_layer()
    air_cells = frame.new_layer()
    if shape.level < 0.3:
        _draw_petrous_ridges(rng, frame, shape, inner_bone, air_cells)
        if shape.level < 0.2:
            _draw_anterior_fossa(rng, frame, shape, inner_bone, air_cells)
    base_bone = (inner_bone > 0) & comp.intracranial
    if base_bone.any():
        hu[base_bone] = rng.uniform(800.0, 1400.0)
        hu[(air_cells > 0) & (base_bone | comp.skull)] = rng.uniform(-950.0, -700.0)
        comp.intracranial &= ~base_bone
        comp.parenchyma &= ~base_bone
        comp.skull |= base_bone


def _draw_petrous_ridges(
    rng: np.random.Generator, frame: _Frame, shape: _Shape, inner_bone: np.ndarray, air_cells: np.ndarray
) -> None:
    """A bony wedge from each side wall toward the clivus, with air cells at its base."""
    u_ = rng.uniform
    for side in (-1.0, 1.0):
        ang = math.pi / 2 - side * u_(0.7, 1.0)  # postero-lateral start on the inner table
        k = _angle_bin(ang)
        start = np.array([shape.r_in[k] * math.cos(ang), shape.r_in[k] * math.sin(ang)]) * 1.05
        end = start + (np.array([side * u_(8.0, 16.0), u_(-8.0, 4.0)]) - start) * u_(0.55, 0.9)
        # A wedge: broad on the lateral wall, tapering to the apex near the clivus.
        along = (end - start) / np.linalg.norm(end - start)
        normal = np.array([-along[1], along[0]])
        base_half = u_(2.5, 5.0) * (0.6 + (0.3 - shape.level) * 2.5)
        t = np.linspace(0.0, 1.0, 10)[:, None]
        spine = start + (end - start) * t
        half = base_half * (1.0 - 0.8 * t) * (1.0 + rng.normal(0.0, 0.12, t.shape))
        frame.polygon(inner_bone, np.vstack([spine + normal * half, (spine - normal * half)[::-1]]))
        for _ in range(int(u_(0, 6))):  # mastoid / petrous air cells
            frame.disc(air_cells, start + (end - start) * u_(0.0, 0.3) + rng.normal(0.0, 1.5, 2), u_(0.6, 1.8))


def _draw_anterior_fossa(
    rng: np.random.Generator, frame: _Frame, shape: _Shape, inner_bone: np.ndarray, air_cells: np.ndarray
) -> None:
    """Floor of the anterior fossa (orbital roofs, crista) cut obliquely: bone bulging in from the
    front; the frontal sinus is air within it."""
    front = np.array([rng.normal(0.0, 3.0), shape.front_v * rng.uniform(0.85, 1.0)])
    frame.polygon(inner_bone, _blob_outline(rng, front, rng.uniform(6.0, 15.0), 0.3))
    if rng.random() < 0.7:
        frame.ellipse(air_cells, front + np.array([0.0, -3.0]), (rng.uniform(3.0, 9.0), rng.uniform(2.0, 4.0)), 0.0)


# --------------------------------------------------------------------------------------------
# Phases: brain and CSF spaces


def _plan_subarachnoid(rng: np.random.Generator, wanted: tuple[str, ...]) -> tuple[float, float] | None:
    """(centre angle, half width) of the convexity sector a subarachnoid bleed fills, if wanted.
    Drawn before the sulci so that the sector can be given sulci to fill."""
    if "subarachnoid" not in wanted:
        return None
    return (rng.uniform(-math.pi, math.pi), rng.uniform(0.35, 1.1))


def _draw_sulci(
    rng: np.random.Generator, frame: _Frame, shape: _Shape, sah_sector: tuple[float, float] | None
) -> _Sulci:
    """Every fold lines the cortex; only some are wide enough to show CSF."""
    u_ = rng.uniform
    perimeter = float(np.mean(shape.r_brain)) * _TAU
    angles = rng.uniform(-math.pi, math.pi, int(perimeter / u_(9.0, 13.0)))
    if sah_sector is not None:  # make sure the bleeding sector has sulci to fill
        extra = max(1, round(sah_sector[1] * u_(3.0, 6.0)))  # ~one per 10-20 degrees: lines, not a sheet
        angles = np.concatenate([angles, sah_sector[0] + rng.uniform(-1.0, 1.0, extra) * sah_sector[1]])
    # Each sulcus is a random walk of 1.2 mm steps heading inward from the brain surface.
    n_sulci = angles.size
    steps = np.maximum(3, (rng.uniform(6.0, 18.0, n_sulci) * (0.6 + 0.6 * shape.level) / 1.2).astype(int))
    heading = (angles + math.pi + rng.normal(0.0, 0.35, n_sulci))[:, None] + np.cumsum(
        rng.normal(0.0, 0.35, (n_sulci, int(steps.max()))), axis=1
    )
    walk = np.cumsum(1.2 * np.stack([np.cos(heading), np.sin(heading)], axis=-1), axis=1)
    k = _angle_bin(angles)
    starts = (shape.r_brain[k] + 0.3)[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    paths = np.concatenate([starts[:, None, :], starts[:, None, :] + walk], axis=1)
    paths_px = frame.fixed(paths).reshape(paths.shape)
    lines = [(float(angles[i]), paths_px[i, : steps[i] + 1]) for i in range(n_sulci)]
    folds, csf = frame.new_layer(), frame.new_layer()
    cv2.polylines(folds, [line for _, line in lines], False, 1, frame.thickness(0.8), cv2.LINE_8, _SHIFT)
    visible = rng.random(n_sulci) < 0.15 + 0.65 * shape.atrophy
    widths = rng.uniform(0.6, 1.2, n_sulci) * (0.7 + 0.8 * shape.atrophy)
    for i in np.flatnonzero(visible):
        line = lines[i][1]
        cv2.polylines(csf, [line], False, 1, frame.thickness(widths[i]), cv2.LINE_8, _SHIFT)
        mouth = line[: max(2, steps[i] // 3)]  # sulci open toward the surface
        cv2.polylines(csf, [mouth], False, 1, frame.thickness(1.6 * widths[i]), cv2.LINE_8, _SHIFT)
    return _Sulci(lines, folds, csf)


def _paint_parenchyma(
    rng: np.random.Generator, frame: _Frame, shape: _Shape, comp: _Compartments, folds: np.ndarray, hu: np.ndarray
) -> float:
    """Fill the intracranial space with CSF and paint the brain over it: cortex of even thickness
    along the surface and every fold, white matter beneath, deep grey nuclei. Returns the CSF HU."""
    u_ = rng.uniform
    csf_hu = u_(2.0, 12.0)
    gm_hu = u_(36.0, 44.0)
    wm_hu = gm_hu - u_(6.0, 12.0)
    hu[comp.intracranial] = csf_hu
    depth_px = cv2.distanceTransform((comp.parenchyma & (folds == 0)).astype(np.uint8), cv2.DIST_L2, 3)
    cortex_mm = u_(2.5, 4.5) + _low_freq(rng, frame.size, 6, 0.6)
    wm = (depth_px > cortex_mm * np.float32(frame.ppm)).astype(np.float32)
    soft = max(0.6, 0.8 * frame.ppm)
    wm = cv2.GaussianBlur(wm, (0, 0), soft)
    tissue = gm_hu + (wm_hu - gm_hu) * wm
    if 0.32 <= shape.level <= 0.58:  # basal ganglia and thalami: grey matter islands in the white matter
        deep = _draw_deep_grey(rng, frame, shape.midline_shift)
        deep_w = cv2.GaussianBlur(deep.astype(np.float32), (0, 0), 1.5 * soft)
        tissue += (gm_hu - 2.0 - tissue) * deep_w
    size = frame.size
    tissue += _low_freq(rng, size, int(u_(5, 9)), u_(0.8, 1.8)) + _low_freq(rng, size, max(8, size // 12), 0.8)
    hu[comp.parenchyma] = tissue[comp.parenchyma]
    return csf_hu


def _draw_deep_grey(rng: np.random.Generator, frame: _Frame, midline_shift: float) -> np.ndarray:
    """Layer with the lentiform nuclei and thalami of both hemispheres."""
    u_ = rng.uniform
    deep = frame.new_layer()
    for side in (-1.0, 1.0):
        frame.ellipse(
            deep,
            (midline_shift + side * u_(15.0, 21.0), u_(-8.0, 2.0)),
            (u_(4.0, 7.0), u_(9.0, 13.0)),
            -side * u_(0.1, 0.4),
        )
        frame.ellipse(deep, (midline_shift + side * u_(6.0, 10.0), u_(8.0, 15.0)), (u_(5.0, 8.0), u_(6.0, 10.0)), 0.0)
    return deep


def _draw_cisterns(rng: np.random.Generator, frame: _Frame, shape: _Shape) -> np.ndarray:
    """Layer with the ambient/suprasellar cisterns: CSF around the midbrain (low levels only)."""
    u_ = rng.uniform
    cistern = frame.new_layer()
    if 0.2 <= shape.level < 0.34:
        mid = np.array([shape.midline_shift * 0.5, u_(0.0, 8.0)])
        outer = np.array([u_(11.0, 14.0), u_(10.0, 13.0)])
        frame.ellipse(cistern, mid, outer, 0.0)
        frame.ellipse(cistern, mid + np.array([0.0, -outer[1] * u_(0.8, 1.0)]), (u_(3.0, 6.0), u_(2.5, 4.5)), 0.0)
        inner = outer - u_(1.0, 2.5)
        frame.ellipse(cistern, mid + np.array([0.0, -u_(0.0, 2.0)]), inner, 0.0, value=0)
    return cistern


def _draw_ventricles(rng: np.random.Generator, frame: _Frame, shape: _Shape, comp: _Compartments) -> _Ventricles:
    """Lateral and third ventricles, sized by atrophy and cut according to the level."""
    u_ = rng.uniform
    present = 0.36 <= shape.level <= 0.72
    vent = frame.new_layer()
    atria: list[np.ndarray] = []
    front, back = shape.front_v * 0.3, shape.back_v * 0.3
    if present:
        size_k = (0.55 + 0.8 * shape.atrophy) * u_(0.8, 1.2) * (shape.a / 64.0)
        head_k = shape.b / 82.0
        front, back = -u_(22.0, 30.0) * head_k, u_(20.0, 30.0) * head_k
        atria = _draw_lateral_ventricles(rng, frame, shape, vent, size_k, front, back)
        if shape.level < 0.5:  # third ventricle: a midline slit between the thalami
            frame.ellipse(vent, (shape.midline_shift, u_(0.0, 6.0)), (u_(0.8, 2.2) * size_k, u_(6.0, 10.0)), 0.0)
    return _Ventricles(present, (vent > 0) & comp.parenchyma, atria, front, back)


def _draw_lateral_ventricles(
    rng: np.random.Generator,
    frame: _Frame,
    shape: _Shape,
    vent: np.ndarray,
    size_k: float,
    front: float,
    back: float,
) -> list[np.ndarray]:
    """Both lateral ventricles as chains of discs from ``front`` to ``back``; returns their atria."""
    u_ = rng.uniform
    level, shift = shape.level, shape.midline_shift
    t = np.linspace(0.0, 1.0, 64)
    if level < 0.42:
        keep = (t <= 0.32) | (t >= 0.72)  # frontal horns and atria; the bodies lie higher
    elif level < 0.6:
        keep = np.ones_like(t, dtype=bool)
    else:
        keep = (t >= 0.15) & (t <= 0.8)  # upper bodies only
    upper = 0.7 if level >= 0.6 else 1.0
    spread, lateral = u_(2.0, 7.0), u_(5.0, 13.0)
    atria = []
    for side in (-1.0, 1.0):
        ctrl = np.array([0.8, 3.6, 3.0, 2.2, 4.2, 2.6, 0.8]) * rng.uniform(0.8, 1.2, 7)
        radius = np.interp(t, [0.0, 0.12, 0.3, 0.55, 0.8, 0.92, 1.0], ctrl) * size_k * upper * u_(0.85, 1.15)
        radius = np.maximum(radius, 0.8)
        centre_u = shift + side * (
            u_(0.8, 1.4) + radius + spread * (2.0 * t - 1.0) ** 2 + lateral * np.maximum(0.0, t - 0.6)
        )
        centre_v = front + (back - front) * t
        frame.discs(vent, np.stack([centre_u, centre_v], axis=1)[keep], radius[keep])
        if level < 0.6:  # the caudate head indents the frontal horn: a crescent
            i = 12
            frame.disc(
                vent,
                (centre_u[i] + side * radius[i] * 1.35, centre_v[i] + radius[i] * 0.6),
                radius[i] * 0.85,
                value=0,
            )
        atria.append(np.array([centre_u[51], centre_v[51]]))
    return atria


def _draw_midline(
    rng: np.random.Generator, frame: _Frame, shape: _Shape, comp: _Compartments, ventricles: _Ventricles
) -> _Midline:
    """Interhemispheric fissure (CSF) with the falx in it, bowed by any midline shift."""
    u_ = rng.uniform
    fissure = frame.new_layer()
    falx = frame.new_layer()
    front_v, back_v = shape.front_v, shape.back_v
    t = np.linspace(0.0, 1.0, 32)
    mid_v = front_v + (back_v - front_v) * t
    mid_u = shape.midline_shift * np.sin(math.pi * t) + rng.normal(0.0, 0.3, t.size).cumsum() * 0.2
    segments = [np.ones_like(t, dtype=bool)]
    if shape.level < 0.72:  # no falx across the corpus callosum / ventricles
        segments = [mid_v < ventricles.front - u_(2.0, 8.0), mid_v > ventricles.back + u_(2.0, 8.0)]
    if shape.level >= 0.3:
        for seg in segments:
            if seg.sum() >= 2:
                line = np.stack([mid_u[seg], mid_v[seg]], axis=1)
                frame.polyline(fissure, line, u_(1.0, 2.5) * (0.7 + 0.8 * shape.atrophy))
                frame.polyline(falx, line, 0.8)
    return _Midline(fissure, (falx > 0) & comp.intracranial, mid_u, mid_v)


def _paint_csf(
    rng: np.random.Generator, comp: _Compartments, brain: _Brain, csf_hu: float, atrophy: float, hu: np.ndarray
) -> None:
    """CSF into the sulci, fissure, cisterns and ventricles; the falx as dense dura."""
    u_ = rng.uniform
    parenchyma = comp.parenchyma
    # Thin sulci are narrower than a voxel in young brains: partial volume keeps them greyish.
    sulcal = (brain.sulci.csf > 0) & parenchyma
    hu[sulcal] += (csf_hu - hu[sulcal]) * np.float32(u_(0.45, 0.75) + 0.25 * atrophy)
    hu[((brain.midline.fissure > 0) | (brain.cistern > 0)) & parenchyma] = csf_hu
    hu[brain.ventricles.mask] = csf_hu + u_(-2.0, 2.0)
    hu[brain.midline.falx_mask] = u_(65.0, 90.0)


def _paint_calcifications(
    rng: np.random.Generator, frame: _Frame, shape: _Shape, comp: _Compartments, brain: _Brain, hu: np.ndarray
) -> np.ndarray:
    """Bright, small and NOT hemorrhage: pineal, choroid plexus, falx plaque. Returns their mask."""
    u_ = rng.uniform
    level, ventricles, midline = shape.level, brain.ventricles, brain.midline
    calc = frame.new_layer()
    if ventricles.present and level < 0.5 and rng.random() < 0.45:  # pineal gland
        frame.disc(calc, (shape.midline_shift + rng.normal(0.0, 0.5), u_(10.0, 18.0)), u_(1.0, 2.5))
    if ventricles.present and rng.random() < 0.35:  # choroid plexus in the atria
        for atrium in ventricles.atria:
            frame.disc(calc, atrium + rng.normal(0.0, 1.0, 2), u_(1.0, 2.5))
    if level > 0.5 and rng.random() < 0.1:  # a falx plaque
        frame.ellipse(calc, (midline.u[20], midline.v[20]), (u_(0.7, 1.5), u_(2.0, 5.0)), 0.0)
    calc_mask = (calc > 0) & comp.intracranial
    hu[calc_mask] = u_(110.0, 320.0)
    return calc_mask


# --------------------------------------------------------------------------------------------
# Phases: bleeds


def _blood_density(rng: np.random.Generator, name: str) -> float:
    """Nominal HU of a bleed of subtype ``name``: its age, and dilution by CSF where it mixes."""
    u_ = rng.uniform
    if name == "subdural" and rng.random() < 0.1:
        return u_(18.0, 32.0)  # chronic: hypodense to brain, still a subdural
    if name in ("intraventricular", "subarachnoid") and rng.random() < 0.3:
        return u_(38.0, 52.0)  # diluted by the CSF it mixes with
    return u_(42.0, 58.0) if rng.random() < 0.15 else u_(58.0, 85.0)  # subacute / acute


class _BleedPainter:
    """Paints bleeds into ``hu`` and the label image, clipped to the intracranial space."""

    def __init__(self, rng: np.random.Generator, hu: np.ndarray, intracranial: np.ndarray) -> None:
        size = hu.shape[0]
        self._rng, self._hu, self._intracranial = rng, hu, intracranial
        self.label = np.zeros((size, size), dtype=np.uint8)  # 0 = none, i + 1 = SUBTYPES[i]; later wins
        self.texture = _low_freq(rng, size, max(6, size // 16), rng.uniform(2.0, 5.0))
        self.densities: dict[str, float] = {}

    def paint(self, region: np.ndarray, name: str) -> None:
        """Blood of subtype ``name`` over ``region`` (inside the skull), over anything painted before."""
        region = region & self._intracranial
        self.densities[name] = _blood_density(self._rng, name)
        self._hu[region] = (self.densities[name] + self.texture[region]).astype(np.float32)
        self.label[region] = SUBTYPES.index(name) + 1


def _paint_bleeds(
    rng: np.random.Generator,
    wanted: tuple[str, ...],
    frame: _Frame,
    shape: _Shape,
    comp: _Compartments,
    brain: _Brain,
    sah_sector: tuple[float, float] | None,
    hu: np.ndarray,
) -> tuple[np.ndarray, dict[str, float]]:
    """Paint each wanted subtype in its compartment; returns the label image and nominal densities.

    The painting order (not :data:`SUBTYPES` order) decides which bleed wins where two overlap.
    """
    painter = _BleedPainter(rng, hu, comp.intracranial)
    if "epidural" in wanted:
        painter.paint(_epidural_region(frame, shape, comp), "epidural")
        if rng.random() < 0.35:
            _add_fracture(rng, frame, shape, comp, hu)
    if "subdural" in wanted:
        painter.paint(_subdural_region(frame, shape), "subdural")
    if sah_sector is not None:
        painter.paint(_subarachnoid_region(rng, frame, shape, comp, brain, sah_sector), "subarachnoid")
    if "intraparenchymal" in wanted:
        near_bone = cv2.dilate(comp.skull.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # e.g. petrous ridges
        allowed = comp.parenchyma & ~brain.ventricles.mask & ~near_bone
        painter.paint(_iph_region(rng, frame, shape.r_brain, allowed, hu), "intraparenchymal")
    if "intraventricular" in wanted and brain.ventricles.mask.any():
        painter.paint(_intraventricular_region(rng, frame, brain.ventricles.mask), "intraventricular")
    return painter.label, painter.densities


def _epidural_region(frame: _Frame, shape: _Shape, comp: _Compartments) -> np.ndarray:
    """The band between the inner table and the inner table minus the epidural thickness."""
    return (frame.rho >= comp.rin - frame.radial(shape.d_edh)) & (shape.d_edh > 0)[frame.aidx]


def _add_fracture(rng: np.random.Generator, frame: _Frame, shape: _Shape, comp: _Compartments, hu: np.ndarray) -> None:
    """A fracture line through the bone over the epidural (the first arc): soft tissue in the skull."""
    center, half = shape.arcs[0]
    ang = center + rng.uniform(-0.6, 0.6) * half
    k = _angle_bin(ang)
    radial_dir = np.array([math.cos(ang), math.sin(ang)])
    crack = np.stack([radial_dir * (shape.r_in[k] - 0.5), radial_dir * (shape.r_out[k] + 0.5)])
    crack += rng.normal(0.0, 0.7, (2, 2))
    layer = frame.new_layer()
    frame.polyline(layer, crack, 0.6)
    broken = (layer > 0) & comp.skull
    hu[broken] = rng.uniform(30.0, 60.0)
    comp.skull &= ~broken


def _subdural_region(frame: _Frame, shape: _Shape) -> np.ndarray:
    """The band of the subdural thickness just inside any epidural."""
    sdh_outer = frame.radial(shape.r_in - shape.d_edh)
    return (
        (frame.rho < sdh_outer) & (frame.rho >= sdh_outer - frame.radial(shape.d_sdh)) & (shape.d_sdh > 0)[frame.aidx]
    )


def _subarachnoid_region(
    rng: np.random.Generator,
    frame: _Frame,
    shape: _Shape,
    comp: _Compartments,
    brain: _Brain,
    sah_sector: tuple[float, float],
) -> np.ndarray:
    """Sulci and the convexity CSF layer within the sector; sometimes the fissure and cisterns."""
    u_ = rng.uniform
    parenchyma = comp.parenchyma
    center, half = sah_sector
    in_sector = np.abs(_wrap(_ANGLES - center)) < half
    sah = frame.new_layer()
    for ang, line in brain.sulci.lines:
        if abs(float(_wrap(ang - center))) < half:
            filled = line[: max(2, int(len(line) * u_(0.5, 1.0)))]
            cv2.polylines(sah, [filled], False, 1, frame.thickness(1.4, min_px=2), cv2.LINE_8, _SHIFT)
    convexity = (frame.rho >= comp.rbrain) & (frame.rho < frame.radial(shape.r_in - shape.d_extra))
    convexity &= in_sector[frame.aidx]
    region = (((sah > 0) & parenchyma) | convexity) & ~brain.ventricles.mask
    if shape.level >= 0.3 and rng.random() < 0.3:  # blood along the interhemispheric fissure
        region |= (brain.midline.fissure > 0) & parenchyma & ~brain.midline.falx_mask
    if rng.random() < 0.7:  # the basal cisterns, the classic aneurysmal pattern
        region |= (brain.cistern > 0) & parenchyma
    return region


def _iph_region(
    rng: np.random.Generator, frame: _Frame, r_brain: np.ndarray, allowed: np.ndarray, hu: np.ndarray
) -> np.ndarray:
    """Draw a lumpy intraparenchymal clot (and paint its edema rim into ``hu``); return its region."""
    u_ = rng.uniform
    min_radius = max(1.5, 1.5 / frame.ppm)
    diameter = math.exp(u_(math.log(3.0), math.log(40.0)))
    radius = max(min_radius, diameter / 2)
    region = np.zeros_like(allowed)
    for _ in range(30):
        if rng.random() < 0.5:  # deep (basal ganglia / thalamus), the hypertensive location
            center = np.array([rng.choice([-1.0, 1.0]) * u_(8.0, 24.0), u_(-12.0, 14.0)])
        else:  # lobar
            ang, frac = u_(-math.pi, math.pi), math.sqrt(u_(0.05, 0.6))
            k = _angle_bin(ang)
            center = frac * r_brain[k] * np.array([math.cos(ang), math.sin(ang)])
        ang = math.atan2(center[1], center[0])
        k = _angle_bin(ang)
        if np.hypot(*center) + radius * 1.2 + 3.0 >= r_brain[k]:
            radius = max(min_radius, radius * 0.85)
            continue
        layer = frame.new_layer()
        frame.polygon(layer, _blob_outline(rng, center, radius, 0.25))
        for _ in range(int(u_(0, 4))):  # satellite lobes make the outline irregular
            ang = u_(0.0, _TAU)
            frame.disc(layer, center + radius * 0.8 * np.array([math.cos(ang), math.sin(ang)]), radius * u_(0.2, 0.5))
        region = (layer > 0) & allowed
        # Keep clots that are mostly parenchymal; one cut away by a ventricle is drawn again.
        if region.sum() >= 0.7 * np.count_nonzero(layer):
            break
    else:  # nothing fitted (a tiny image): a small clot at the deepest parenchymal point
        depth = cv2.distanceTransform(allowed.astype(np.uint8), cv2.DIST_L2, 3)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        layer = frame.new_layer()
        cv2.circle(layer, (int(x), int(y)), max(1, round(min(float(depth[y, x]) - 1, min_radius * frame.ppm))), 1, -1)
        region = (layer > 0) & allowed
    if radius >= 3.0 and rng.random() < 0.6:  # vasogenic edema: hypodense rim, not blood
        rim_px = max(1, round(u_(1.5, 2.0 + 0.4 * radius) * frame.ppm))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim_px + 1, 2 * rim_px + 1))
        edema = (cv2.dilate(region.astype(np.uint8), kernel) > 0) & allowed & ~region
        hu[edema] = u_(15.0, 25.0) + rng.normal(0.0, 1.0)
    return region


def _intraventricular_region(rng: np.random.Generator, frame: _Frame, vent_mask: np.ndarray) -> np.ndarray:
    """A cast of the ventricles, or (usually) a dependent layer below a fluid level."""
    rows, cols = _pixel_grid(frame.size)
    ys = rows[vent_mask]
    if rng.random() < 0.15:
        return vent_mask  # a cast filling the ventricles
    # Blood settles posteriorly in a supine patient: a horizontal fluid level in image rows.
    cut = np.quantile(ys, 1.0 - rng.uniform(0.1, 0.6))
    region = vent_mask & (rows >= cut)
    if rng.random() < 0.5:  # often one side only
        side_mask = (cols < frame.cx) if rng.random() < 0.5 else (cols >= frame.cx)
        if (region & side_mask).any():
            region = region & side_mask
    return region


# --------------------------------------------------------------------------------------------
# Phases: scanner and output


def _add_head_rest(rng: np.random.Generator, frame: _Frame, head: np.ndarray, hu: np.ndarray) -> None:
    """Half the time, the scanner's head rest: a bright arc under the head, in image axes."""
    if rng.random() >= 0.5:
        return
    u_ = rng.uniform
    size, ppm = frame.size, frame.ppm
    rest = frame.new_layer()
    rows = np.flatnonzero(head.any(axis=1))
    bottom = (rows[-1] if rows.size else size * 0.8) + u_(2.0, 10.0) * ppm
    ry = u_(0.42, 0.65) * size
    rx = ry * u_(0.9, 1.3)
    cv2.ellipse(
        rest,
        (round(frame.cx * _ONE), round((bottom - ry) * _ONE)),
        (round(rx * _ONE), round(ry * _ONE)),
        0.0,
        15.0,
        165.0,
        1,
        max(1, round(u_(1.0, 3.0) * ppm)),
        cv2.LINE_8,
        _SHIFT,
    )
    hu[(rest > 0) & ~head] = u_(150.0, 500.0)


def _blur_and_noise(rng: np.random.Generator, frame: _Frame, hu: np.ndarray) -> np.ndarray:
    """Partial-volume blur and spatially correlated noise, as in a reconstructed slice."""
    hu = cv2.GaussianBlur(hu, (0, 0), max(0.5, rng.uniform(0.35, 0.6) * frame.ppm))
    noise = rng.standard_normal((frame.size, frame.size), dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.8)  # CT noise is spatially correlated
    hu += noise * np.float32(rng.uniform(2.5, 5.0) / max(float(noise.std()), 1e-6))
    return hu


def _assemble(
    hu: np.ndarray,
    label: np.ndarray,
    densities: dict[str, float],
    comp: _Compartments,
    vent_mask: np.ndarray,
    calc_mask: np.ndarray,
    mm_per_px: float,
    level: float,
) -> SyntheticSlice:
    """Split the label image into per-subtype masks and package the slice."""
    subtype_masks = {name: label == i + 1 for i, name in enumerate(SUBTYPES)}
    present = tuple(name for name in SUBTYPES if subtype_masks[name].any())
    return SyntheticSlice(
        hu=hu.astype(np.float32, copy=False),
        mask=label > 0,
        subtype_masks=subtype_masks,
        subtypes=present,
        anatomy={
            "head": comp.head,
            "skull": comp.skull,
            "intracranial": comp.intracranial,
            "ventricles": vent_mask,
            "calcification": calc_mask & (label == 0),
        },
        densities={name: round(densities[name], 2) for name in present},
        mm_per_pixel=mm_per_px,
        level=level,
    )
