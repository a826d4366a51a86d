"""CT display windows: Hounsfield units to 8-bit grey levels.

Named once here and used by every reader of HU data, by training and by serving. Inputs that are
already windowed 8-bit images (videos, JPG/PNG exports) pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ichseg.scan import Scan


@dataclass(frozen=True)
class Window:
    """A CT window: grey levels span ``[level - width/2, level + width/2]`` HU."""

    name: str
    level: float
    width: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2


BRAIN = Window("brain", level=40, width=80)
CT_ICH_BRAIN = Window("ct-ich-brain", level=40, width=120)
"""The brain window of the CT-ICH exports (Hssayeni et al. 2020): what the shipped model sees."""
SUBDURAL = Window("subdural", level=75, width=215)
BONE = Window("bone", level=600, width=2800)

PRESETS: dict[str, Window] = {w.name: w for w in (BRAIN, CT_ICH_BRAIN, SUBDURAL, BONE)}
DEFAULT_WINDOW = CT_ICH_BRAIN


def window_by_name(name: str) -> Window:
    """Look a preset up by name, with a helpful error for typos."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown window {name!r}; choose one of {', '.join(PRESETS)}") from None


def apply_window(hu: np.ndarray, window: Window) -> np.ndarray:
    """Map HU to uint8: ``low`` and below -> 0, ``high`` and above -> 255, linear in between."""
    scaled = (np.asarray(hu, dtype=np.float32) - window.low) * (255.0 / window.width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def windowed_slices(scan: Scan, window: Window = DEFAULT_WINDOW) -> np.ndarray:
    """The scan's slices as uint8 grey levels: windowed from HU, or passed through if already 8-bit."""
    if scan.hu:
        return apply_window(scan.slices, window)
    return np.asarray(scan.slices, dtype=np.uint8)
