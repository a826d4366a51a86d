"""Input that cannot be read as head CT in a brain window is refused before the model sees it.

The model reads Hounsfield units through a brain window, where the skull is the brightest thing in
every slice. A series whose values were clipped or windowed before export (0-80 HU, say, or grey
levels stored as HU) has no bone left: the window then maps the skull to blood's grey, and the
model paints it as hemorrhage on every slice (a 0-80 HU series came back 32 of 32 slices and
340 mL). Nothing can be learnt from such a series, so it is refused with the reason, and the
sender can export the original.

The same holds for 8-bit input (a video, images): in any brain-type window bone is white, so a head
slice always has a ring of white pixels. Input without them is not brain-window head CT: a bone or
lung window, an inverted or heavily dimmed export, a photograph. It is refused too.

What the model reads poorly but can still read (one slice, thin slices, partial coverage) is not
refused: :mod:`ichseg.input_warnings` flags it in the answer.
"""

from __future__ import annotations

import numpy as np

from ichseg.errors import UnfitScanError
from ichseg.preprocess import BONE_LEVEL
from ichseg.scan import Scan

BONE_HU = 300.0
"""Cortical bone is 700-1,000+ HU and the skull's thinnest parts stay above 300 on head CT; no soft
tissue, blood or contrast-free brain reaches it."""
MIN_BONE_FRACTION = 1e-3
"""The share of a series' pixels at bone density below which it has no skull left: a head slice's
skull is several percent of its pixels (at least 4 % of every CT-ICH patient's), a clipped series
has none."""


def require_brain_window_ct(scan: Scan) -> None:
    """Raise :class:`~ichseg.errors.UnfitScanError` for a scan without bone: a HU scan with no
    bone-density pixels, or 8-bit input with no white (bone) pixels in a brain-type window."""
    if scan.num_slices == 0:
        return
    slices = np.asarray(scan.slices)
    level = BONE_HU if scan.hu else BONE_LEVEL
    # Slice by slice: a whole-volume comparison would allocate a boolean copy of the scan (150 MB
    # for 600 thin slices) in the split, whose memory is bounded by the volume itself.
    bone = sum(int(np.count_nonzero(one >= level)) for one in slices)
    if bone >= MIN_BONE_FRACTION * slices.size:
        return
    low, high = float(slices.min()), float(slices.max())
    if not scan.hu:
        raise UnfitScanError(
            f"the scan shows no skull: in a brain window bone is white (grey >= {BONE_LEVEL}), and its "
            f"brightest grey is {high:.0f}; it looks like another window, an inverted or dimmed export, or "
            "not a head CT; send the slices in a brain window (e.g. L40/W80) or the DICOM series"
        )
    raise UnfitScanError(
        f"the scan has no bone-density pixels (>= {BONE_HU:.0f} HU; its values run from {low:.0f} to "
        f"{high:.0f} HU): it looks clipped or windowed before export, and the model would read the skull "
        "as blood; send the original CT series in Hounsfield units"
    )
