"""Where the repository keeps its committed artifacts (sample scan, shipped model)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "samples"
SAMPLE_SCAN_DIR = SAMPLES / "ct-ich-051"
SAMPLE_VIDEO = SAMPLE_SCAN_DIR / "brain.mp4"
"""The demo scan: a real CT-ICH patient with hemorrhage, as the H.264 video the mobile app uploads."""
MODELS = REPO_ROOT / "models"
SHIPPED_MODEL = MODELS / "ichseg-unet.onnx"
"""The committed model, produced by training/ and model_export/ (see models/MODEL_CARD.md)."""
