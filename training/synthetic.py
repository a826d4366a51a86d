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
# The generator


def _generate(rng: np.random.Generator, size: int, wanted: tuple[str, ...]) -> SyntheticSlice:
    u_ = rng.uniform  # short alias: this function is mostly parameter draws

    mm_per_px = u_(190.0, 265.0) / size  # field of view 19-27 cm
    # Extra-axial bleeds at least ~3 pixels thick: thinner ones vanish into the bone's partial volume.
    min_bleed_mm = 3.0 * mm_per_px

    # --- level and head shape (mm) -----------------------------------------------------------
    level = u_(0.38, 0.58) if "intraventricular" in wanted else u_(0.08, 1.0)
    # The cranial vault is a dome: the cross-section shrinks toward the vertex (and a little at the base).
    shrink = 1.0 if level <= 0.62 else math.sqrt(max(0.0, 1.0 - ((level - 0.62) / 0.55) ** 2))
    shrink *= 1.0 - 0.4 * max(0.0, 0.25 - level)
    a = u_(58.0, 70.0) * shrink  # left-right semi-axis of the inner table
    b = max(a * 1.08, u_(74.0, 90.0) * shrink)  # antero-posterior semi-axis
    cos_t, sin_t = np.cos(_ANGLES), np.sin(_ANGLES)
    ellipse_r = a * b / np.sqrt((b * cos_t) ** 2 + (a * sin_t) ** 2)
    egg = u_(0.0, 0.05) * sin_t  # occiput a little broader than the forehead
    r_in = ellipse_r * (1.0 + egg + _periodic(rng, 2, 8, 0.012))

    thickness = u_(3.5, 6.5) * (1.0 + 0.3 * sin_t**2) * (1.0 + _periodic(rng, 1, 10, 0.12))
    if level > 0.8:  # the dome is cut obliquely near the vertex: the bone looks thicker
        thickness *= 1.0 + 2.0 * (level - 0.8)
    r_out = r_in + np.maximum(thickness, 2.5)

    scalp = u_(2.5, 5.0) * (1.0 + _periodic(rng, 1, 6, 0.15))
    if level < 0.62:  # temporalis muscles thicken the soft tissue at the sides
        scalp += u_(2.0, 7.0) * cos_t**4
    scalp = np.maximum(scalp, 1.5)

    atrophy = u_(0.0, 1.0)  # drives the CSF spaces: sulci, extra-axial CSF, ventricle size
    gap = np.maximum(0.0, (0.3 + 2.2 * atrophy) * (1.0 + _periodic(rng, 1, 12, 0.35)))

    # --- extra-axial bleed plans (thickness profiles over the angle, mm) ---------------------
    d_edh = np.zeros(_N_ANGLES)
    d_sdh = np.zeros(_N_ANGLES)
    bleed_arcs: list[tuple[float, float]] = []
    if "epidural" in wanted:
        center, half = u_(-math.pi, math.pi), u_(0.22, 0.5)  # short arc: sutures bound it
        x = _arc_profile(center, half)
        peak = max(min_bleed_mm, min(u_(5.0, 22.0), 0.3 * a))
        d_edh = np.nan_to_num(peak * (1.0 - x**2) ** u_(0.5, 0.8) * (1.0 + _periodic(rng, 3, 9, 0.04)))
        bleed_arcs.append((center, half))
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
        bleed_arcs.append((center, half))
    d_sdh = np.maximum(d_sdh, 0.0)
    d_extra = d_edh + d_sdh
    r_brain = r_in - np.maximum(gap, d_extra)  # the brain is pushed in by an extra-axial bleed

    # Soft-tissue swelling over the impact site, common with traumatic extra-axial bleeds.
    for center, half in bleed_arcs:
        if rng.random() < 0.5:
            x = _arc_profile(center + rng.normal(0.0, 0.2), half * u_(0.5, 1.2))
            scalp = scalp + np.nan_to_num(u_(2.0, 9.0) * (1.0 - x**2))
    r_scalp = r_out + scalp

    # Midline shift away from a large lateral bleed (mass effect), in mm along u.
    midline_shift = 0.0
    for center, _half in bleed_arcs:
        k = _angle_bin(center)
        midline_shift -= 0.35 * d_extra[k] * math.cos(center)
    midline_shift = float(np.clip(midline_shift, -12.0, 12.0))

    # --- frame ---------------------------------------------------------------------------------
    offset_px = rng.normal(0.0, 0.035 * size, 2)
    frame = _Frame(size, mm_per_px, size / 2 + offset_px[0], size / 2 + offset_px[1], rng.normal(0.0, 0.12))
    ppm = frame.ppm
    rho, aidx = frame.rho, frame.aidx

    def radial(table: np.ndarray) -> np.ndarray:
        return table.astype(np.float32)[aidx]

    rin_p, rout_p, rbrain_p = radial(r_in), radial(r_out), radial(r_brain)
    intracranial = rho < rin_p
    skull = ~intracranial & (rho < rout_p)
    head = rho < radial(r_scalp)
    parenchyma = rho < rbrain_p

    # --- soft tissue and bone ----------------------------------------------------------------
    hu = np.full((size, size), AIR_HU, dtype=np.float32)
    hu[head] = u_(25.0, 55.0)
    if rng.random() < 0.6:  # subcutaneous fat: a dark band in the scalp
        fat_in = radial(r_out + scalp * u_(0.25, 0.45))
        fat_out = radial(r_out + scalp * u_(0.6, 0.8))
        hu[head & (rho >= fat_in) & (rho < fat_out)] = u_(-100.0, -40.0)
    frac = np.clip((rho - rin_p) / np.maximum(rout_p - rin_p, 1e-3), 0.0, 1.0)
    table_hu, diploe_hu = u_(1150.0, 1500.0), u_(700.0, 900.0)
    bone_hu = table_hu - (table_hu - diploe_hu) * np.sin(np.float32(math.pi) * frac) ** 2
    hu = np.where(skull, bone_hu, hu)

    # --- skull base (low levels): petrous ridges, anterior fossa floor, sinus/mastoid air ------
    inner_bone = frame.new_layer()
    air_cells = frame.new_layer()
    if level < 0.3:
        for side in (-1.0, 1.0):
            ang = math.pi / 2 - side * u_(0.7, 1.0)  # postero-lateral start on the inner table
            k = _angle_bin(ang)
            start = np.array([r_in[k] * math.cos(ang), r_in[k] * math.sin(ang)]) * 1.05
            end = start + (np.array([side * u_(8.0, 16.0), u_(-8.0, 4.0)]) - start) * u_(0.55, 0.9)
            # A wedge: broad on the lateral wall, tapering to the apex near the clivus.
            along = (end - start) / np.linalg.norm(end - start)
            normal = np.array([-along[1], along[0]])
            base_half = u_(2.5, 5.0) * (0.6 + (0.3 - level) * 2.5)
            t = np.linspace(0.0, 1.0, 10)[:, None]
            spine = start + (end - start) * t
            half = base_half * (1.0 - 0.8 * t) * (1.0 + rng.normal(0.0, 0.12, t.shape))
            frame.polygon(inner_bone, np.vstack([spine + normal * half, (spine - normal * half)[::-1]]))
            for _ in range(int(u_(0, 6))):  # mastoid / petrous air cells
                frame.disc(air_cells, start + (end - start) * u_(0.0, 0.3) + rng.normal(0.0, 1.5, 2), u_(0.6, 1.8))
        if level < 0.2:
            # Floor of the anterior fossa (orbital roofs, crista) cut obliquely: bone bulging in
            # from the front; the frontal sinus is air within it.
            front = np.array([rng.normal(0.0, 3.0), -r_in[_N_ANGLES // 4] * u_(0.85, 1.0)])
            frame.polygon(inner_bone, _blob_outline(rng, front, u_(6.0, 15.0), 0.3))
            if rng.random() < 0.7:
                frame.ellipse(air_cells, front + np.array([0.0, -3.0]), (u_(3.0, 9.0), u_(2.0, 4.0)), 0.0)
    base_bone = (inner_bone > 0) & intracranial
    if base_bone.any():
        hu[base_bone] = u_(800.0, 1400.0)
        hu[(air_cells > 0) & (base_bone | skull)] = u_(-950.0, -700.0)
        intracranial &= ~base_bone
        parenchyma &= ~base_bone
        skull |= base_bone

    # --- sulci: every fold lines the cortex; only some are wide enough to show CSF ------------
    sah_sector: tuple[float, float] | None = None
    if "subarachnoid" in wanted:
        sah_sector = (u_(-math.pi, math.pi), u_(0.35, 1.1))
    perimeter = float(np.mean(r_brain)) * _TAU
    angles = rng.uniform(-math.pi, math.pi, int(perimeter / u_(9.0, 13.0)))
    if sah_sector is not None:  # make sure the bleeding sector has sulci to fill
        extra = max(1, round(sah_sector[1] * u_(3.0, 6.0)))  # ~one per 10-20 degrees: lines, not a sheet
        angles = np.concatenate([angles, sah_sector[0] + rng.uniform(-1.0, 1.0, extra) * sah_sector[1]])
    # Each sulcus is a random walk of 1.2 mm steps heading inward from the brain surface.
    n_sulci = angles.size
    steps = np.maximum(3, (rng.uniform(6.0, 18.0, n_sulci) * (0.6 + 0.6 * level) / 1.2).astype(int))
    heading = (angles + math.pi + rng.normal(0.0, 0.35, n_sulci))[:, None] + np.cumsum(
        rng.normal(0.0, 0.35, (n_sulci, int(steps.max()))), axis=1
    )
    walk = np.cumsum(1.2 * np.stack([np.cos(heading), np.sin(heading)], axis=-1), axis=1)
    k = _angle_bin(angles)
    starts = (r_brain[k] + 0.3)[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    paths = np.concatenate([starts[:, None, :], starts[:, None, :] + walk], axis=1)
    paths_px = frame.fixed(paths).reshape(paths.shape)
    sulci = [(float(angles[i]), paths_px[i, : steps[i] + 1]) for i in range(n_sulci)]
    folds, csf = frame.new_layer(), frame.new_layer()
    cv2.polylines(folds, [line for _, line in sulci], False, 1, frame.thickness(0.8), cv2.LINE_8, _SHIFT)
    visible = rng.random(n_sulci) < 0.15 + 0.65 * atrophy
    widths = rng.uniform(0.6, 1.2, n_sulci) * (0.7 + 0.8 * atrophy)
    for i in np.flatnonzero(visible):
        line = sulci[i][1]
        cv2.polylines(csf, [line], False, 1, frame.thickness(widths[i]), cv2.LINE_8, _SHIFT)
        mouth = line[: max(2, steps[i] // 3)]  # sulci open toward the surface
        cv2.polylines(csf, [mouth], False, 1, frame.thickness(1.6 * widths[i]), cv2.LINE_8, _SHIFT)

    # --- brain parenchyma: cortex of even thickness along the surface and every fold ----------
    csf_hu = u_(2.0, 12.0)
    gm_hu = u_(36.0, 44.0)
    wm_hu = gm_hu - u_(6.0, 12.0)
    hu[intracranial] = csf_hu
    depth_px = cv2.distanceTransform((parenchyma & (folds == 0)).astype(np.uint8), cv2.DIST_L2, 3)
    cortex_mm = u_(2.5, 4.5) + _low_freq(rng, size, 6, 0.6)
    wm = (depth_px > cortex_mm * np.float32(ppm)).astype(np.float32)
    soft = max(0.6, 0.8 * ppm)
    wm = cv2.GaussianBlur(wm, (0, 0), soft)
    tissue = gm_hu + (wm_hu - gm_hu) * wm
    if 0.32 <= level <= 0.58:  # basal ganglia and thalami: grey matter islands in the white matter
        deep = frame.new_layer()
        for side in (-1.0, 1.0):
            frame.ellipse(
                deep,
                (midline_shift + side * u_(15.0, 21.0), u_(-8.0, 2.0)),
                (u_(4.0, 7.0), u_(9.0, 13.0)),
                -side * u_(0.1, 0.4),
            )
            frame.ellipse(
                deep, (midline_shift + side * u_(6.0, 10.0), u_(8.0, 15.0)), (u_(5.0, 8.0), u_(6.0, 10.0)), 0.0
            )
        deep_w = cv2.GaussianBlur(deep.astype(np.float32), (0, 0), 1.5 * soft)
        tissue += (gm_hu - 2.0 - tissue) * deep_w
    tissue += _low_freq(rng, size, int(u_(5, 9)), u_(0.8, 1.8)) + _low_freq(rng, size, max(8, size // 12), 0.8)
    hu[parenchyma] = tissue[parenchyma]

    front_v, back_v = -float(r_in[_N_ANGLES // 4]), float(r_in[3 * _N_ANGLES // 4])
    cistern = frame.new_layer()
    if 0.2 <= level < 0.34:  # ambient/suprasellar cisterns: CSF around the midbrain
        mid = np.array([midline_shift * 0.5, u_(0.0, 8.0)])
        outer = np.array([u_(11.0, 14.0), u_(10.0, 13.0)])
        frame.ellipse(cistern, mid, outer, 0.0)
        frame.ellipse(cistern, mid + np.array([0.0, -outer[1] * u_(0.8, 1.0)]), (u_(3.0, 6.0), u_(2.5, 4.5)), 0.0)
        inner = outer - u_(1.0, 2.5)
        frame.ellipse(cistern, mid + np.array([0.0, -u_(0.0, 2.0)]), inner, 0.0, value=0)
    has_ventricles = 0.36 <= level <= 0.72
    vent = frame.new_layer()
    atria: list[np.ndarray] = []
    vent_front, vent_back = front_v * 0.3, back_v * 0.3
    if has_ventricles:
        size_k = (0.55 + 0.8 * atrophy) * u_(0.8, 1.2) * (a / 64.0)
        head_k = b / 82.0
        vent_front, vent_back = -u_(22.0, 30.0) * head_k, u_(20.0, 30.0) * head_k
        t = np.linspace(0.0, 1.0, 64)
        if level < 0.42:
            keep = (t <= 0.32) | (t >= 0.72)  # frontal horns and atria; the bodies lie higher
        elif level < 0.6:
            keep = np.ones_like(t, dtype=bool)
        else:
            keep = (t >= 0.15) & (t <= 0.8)  # upper bodies only
        upper = 0.7 if level >= 0.6 else 1.0
        spread, lateral = u_(2.0, 7.0), u_(5.0, 13.0)
        for side in (-1.0, 1.0):
            ctrl = np.array([0.8, 3.6, 3.0, 2.2, 4.2, 2.6, 0.8]) * rng.uniform(0.8, 1.2, 7)
            radius = np.interp(t, [0.0, 0.12, 0.3, 0.55, 0.8, 0.92, 1.0], ctrl) * size_k * upper * u_(0.85, 1.15)
            radius = np.maximum(radius, 0.8)
            centre_u = midline_shift + side * (
                u_(0.8, 1.4) + radius + spread * (2.0 * t - 1.0) ** 2 + lateral * np.maximum(0.0, t - 0.6)
            )
            centre_v = vent_front + (vent_back - vent_front) * t
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
        if level < 0.5:  # third ventricle: a midline slit between the thalami
            frame.ellipse(vent, (midline_shift, u_(0.0, 6.0)), (u_(0.8, 2.2) * size_k, u_(6.0, 10.0)), 0.0)
    vent_mask = (vent > 0) & parenchyma

    # Interhemispheric fissure (CSF) with the falx in it, bowed by any midline shift.
    fissure = frame.new_layer()
    falx = frame.new_layer()
    t = np.linspace(0.0, 1.0, 32)
    mid_v = front_v + (back_v - front_v) * t
    mid_u = midline_shift * np.sin(math.pi * t) + rng.normal(0.0, 0.3, t.size).cumsum() * 0.2
    segments = [np.ones_like(t, dtype=bool)]
    if level < 0.72:  # no falx across the corpus callosum / ventricles
        segments = [mid_v < vent_front - u_(2.0, 8.0), mid_v > vent_back + u_(2.0, 8.0)]
    if level >= 0.3:
        for seg in segments:
            if seg.sum() >= 2:
                line = np.stack([mid_u[seg], mid_v[seg]], axis=1)
                frame.polyline(fissure, line, u_(1.0, 2.5) * (0.7 + 0.8 * atrophy))
                frame.polyline(falx, line, 0.8)
    # Thin sulci are narrower than a voxel in young brains: partial volume keeps them greyish.
    sulcal = (csf > 0) & parenchyma
    hu[sulcal] += (csf_hu - hu[sulcal]) * np.float32(u_(0.45, 0.75) + 0.25 * atrophy)
    hu[((fissure > 0) | (cistern > 0)) & parenchyma] = csf_hu
    hu[vent_mask] = csf_hu + u_(-2.0, 2.0)
    falx_mask = (falx > 0) & intracranial
    hu[falx_mask] = u_(65.0, 90.0)

    # --- calcifications: bright, small, and NOT hemorrhage ------------------------------------
    calc = frame.new_layer()
    if has_ventricles and level < 0.5 and rng.random() < 0.45:  # pineal gland
        frame.disc(calc, (midline_shift + rng.normal(0.0, 0.5), u_(10.0, 18.0)), u_(1.0, 2.5))
    if has_ventricles and rng.random() < 0.35:  # choroid plexus in the atria
        for atrium in atria:
            frame.disc(calc, atrium + rng.normal(0.0, 1.0, 2), u_(1.0, 2.5))
    if level > 0.5 and rng.random() < 0.1:  # a falx plaque
        frame.ellipse(calc, (mid_u[20], mid_v[20]), (u_(0.7, 1.5), u_(2.0, 5.0)), 0.0)
    calc_mask = (calc > 0) & intracranial
    hu[calc_mask] = u_(110.0, 320.0)

    # --- bleeds ------------------------------------------------------------------------------
    label = np.zeros((size, size), dtype=np.uint8)  # 0 = none, i + 1 = SUBTYPES[i]; later wins
    blood_tex = _low_freq(rng, size, max(6, size // 16), u_(2.0, 5.0))

    densities: dict[str, float] = {}

    def blood_hu(name: str) -> float:
        if name == "subdural" and rng.random() < 0.1:
            return u_(18.0, 32.0)  # chronic: hypodense to brain, still a subdural
        if name in ("intraventricular", "subarachnoid") and rng.random() < 0.3:
            return u_(38.0, 52.0)  # diluted by the CSF it mixes with
        return u_(42.0, 58.0) if rng.random() < 0.15 else u_(58.0, 85.0)  # subacute / acute

    def paint(region: np.ndarray, name: str) -> None:
        region = region & intracranial
        densities[name] = blood_hu(name)
        hu[region] = (densities[name] + blood_tex[region]).astype(np.float32)
        label[region] = SUBTYPES.index(name) + 1

    if "epidural" in wanted:
        paint((rho >= rin_p - radial(d_edh)) & (d_edh > 0)[aidx], "epidural")
        if rng.random() < 0.35:  # fracture line through the bone over the epidural
            center, half = bleed_arcs[0]
            ang = center + u_(-0.6, 0.6) * half
            k = _angle_bin(ang)
            radial_dir = np.array([math.cos(ang), math.sin(ang)])
            crack = np.stack([radial_dir * (r_in[k] - 0.5), radial_dir * (r_out[k] + 0.5)])
            crack += rng.normal(0.0, 0.7, (2, 2))
            layer = frame.new_layer()
            frame.polyline(layer, crack, 0.6)
            broken = (layer > 0) & skull
            hu[broken] = u_(30.0, 60.0)
            skull &= ~broken
    if "subdural" in wanted:
        sdh_outer = radial(r_in - d_edh)
        paint((rho < sdh_outer) & (rho >= sdh_outer - radial(d_sdh)) & (d_sdh > 0)[aidx], "subdural")
    if sah_sector is not None:
        center, half = sah_sector
        in_sector = np.abs(_wrap(_ANGLES - center)) < half
        sah = frame.new_layer()
        for ang, line in sulci:
            if abs(float(_wrap(ang - center))) < half:
                filled = line[: max(2, int(len(line) * u_(0.5, 1.0)))]
                cv2.polylines(sah, [filled], False, 1, frame.thickness(1.4, min_px=2), cv2.LINE_8, _SHIFT)
        convexity = (rho >= rbrain_p) & (rho < radial(r_in - d_extra)) & in_sector[aidx]
        region = (((sah > 0) & parenchyma) | convexity) & ~vent_mask
        if level >= 0.3 and rng.random() < 0.3:  # blood along the interhemispheric fissure
            region |= (fissure > 0) & parenchyma & ~falx_mask
        if rng.random() < 0.7:  # the basal cisterns, the classic aneurysmal pattern
            region |= (cistern > 0) & parenchyma
        paint(region, "subarachnoid")
    if "intraparenchymal" in wanted:
        near_bone = cv2.dilate(skull.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # e.g. petrous ridges
        paint(_iph_region(rng, frame, r_brain, parenchyma & ~vent_mask & ~near_bone, hu), "intraparenchymal")
    if "intraventricular" in wanted and vent_mask.any():
        rows, cols = _pixel_grid(size)
        ys = rows[vent_mask]
        if rng.random() < 0.15:
            region = vent_mask  # a cast filling the ventricles
        else:
            # Blood settles posteriorly in a supine patient: a horizontal fluid level in image rows.
            cut = np.quantile(ys, 1.0 - u_(0.1, 0.6))
            region = vent_mask & (rows >= cut)
            if rng.random() < 0.5:  # often one side only
                side_mask = (cols < frame.cx) if rng.random() < 0.5 else (cols >= frame.cx)
                if (region & side_mask).any():
                    region = region & side_mask
        paint(region, "intraventricular")

    # --- scanner: head rest, partial volume blur, noise ----------------------------------------
    if rng.random() < 0.5:
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

    hu = cv2.GaussianBlur(hu, (0, 0), max(0.5, u_(0.35, 0.6) * ppm))
    noise = rng.standard_normal((size, size), dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.8)  # CT noise is spatially correlated
    hu += noise * np.float32(u_(2.5, 5.0) / max(float(noise.std()), 1e-6))

    subtype_masks = {name: label == i + 1 for i, name in enumerate(SUBTYPES)}
    present = tuple(name for name in SUBTYPES if subtype_masks[name].any())
    return SyntheticSlice(
        hu=hu.astype(np.float32, copy=False),
        mask=label > 0,
        subtype_masks=subtype_masks,
        subtypes=present,
        anatomy={
            "head": head,
            "skull": skull,
            "intracranial": intracranial,
            "ventricles": vent_mask,
            "calcification": calc_mask & (label == 0),
        },
        densities={name: round(densities[name], 2) for name in present},
        mm_per_pixel=mm_per_px,
        level=level,
    )


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
