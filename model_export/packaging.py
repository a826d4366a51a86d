"""Build the SageMaker ``model.tar.gz`` for the endpoint.

    python -m model_export.packaging --model models/ichseg-unet.onnx --out build/model.tar.gz \
        [--variant models/ichseg-unet-fp16.onnx] [--card models/MODEL_CARD.md]

SageMaker extracts the archive into ``/opt/ml/model`` before it starts the container. The archive
holds data only, flat at its root:

- ``ichseg-unet.onnx``: the model the server loads by default (``--model`` is stored under this
  name whatever the file is called, so the image needs no configuration);
- each ``--variant`` under its own file name (e.g. the fp16 export), chosen at deploy time with
  ``ICHSEG_MODEL=/opt/ml/model/<name>`` (``deploy_endpoint --model-file``);
- ``MODEL_CARD.md``: the card beside the model (or ``--card``), else one rendered from the
  model's metadata, so an archive in S3 says what it is.

There is no ``code/`` directory: the server (``serving/server.py``) is baked into the
endpoint image, and everything it needs to run a model correctly (input size, window, thresholds)
travels inside the ONNX file's metadata. The archive is reproducible: same inputs, same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from ichseg.model_file import read_metadata
from ichseg.model_metadata import ModelMetadata

DEFAULT_MODEL_NAME = "ichseg-unet.onnx"
CARD_NAME = "MODEL_CARD.md"


@dataclass(frozen=True)
class PackagedModel:
    """What went into an archive."""

    archive: Path
    members: tuple[str, ...]
    metadata: ModelMetadata
    """Metadata of the default model."""


def render_card(metadata: ModelMetadata) -> str:
    """A minimal model card from the ONNX metadata, for models packaged without a written card."""
    return (
        f"# Model card: {metadata.name} {metadata.version}\n\n"
        f"**{metadata.intended_use}**\n\n"
        "Generated from the model's ONNX metadata (no written card was packaged with it).\n\n"
        "```json\n" + json.dumps(json.loads(metadata.to_json()), indent=2, sort_keys=True) + "\n```\n"
    )


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # reproducible: the archive's bytes depend on its contents only
    archive.addfile(info, io.BytesIO(data))


def package_model(
    model: str | Path,
    out: str | Path,
    variants: Sequence[str | Path] = (),
    card: str | Path | None = None,
) -> PackagedModel:
    """Write ``out`` (a ``model.tar.gz``) holding the model, its variants and a model card.

    Every ONNX file must carry ichseg metadata (the server refuses one without); names must not
    collide. The archive is written beside ``out`` first and renamed, so a failed run leaves no
    half-written archive for an upload step to pick up.
    """
    model = Path(model)
    metadata = read_metadata(model)
    files: dict[str, Path] = {DEFAULT_MODEL_NAME: model}
    for variant in map(Path, variants):
        read_metadata(variant)
        if variant.name in files:
            raise ValueError(f"variant {variant} would overwrite {variant.name} in the archive; rename it")
        files[variant.name] = variant
    card_path = Path(card) if card else model.with_name(CARD_NAME)
    if card and not card_path.is_file():
        raise FileNotFoundError(f"model card not found: {card_path}")
    card_text = card_path.read_text(encoding="utf-8") if card_path.is_file() else render_card(metadata)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with (
        open(partial, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for name, path in files.items():  # the default model first, then the variants as given
            _add_bytes(archive, name, path.read_bytes())
        _add_bytes(archive, CARD_NAME, card_text.encode("utf-8"))
    os.replace(partial, out)
    return PackagedModel(out, (*files, CARD_NAME), metadata)


def archive_members(archive: str | Path) -> list[str]:
    """Names of the files in a ``model.tar.gz``, in archive order."""
    with tarfile.open(archive, "r:gz") as opened:
        return [member.name for member in opened.getmembers()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the SageMaker model.tar.gz for the ichseg endpoint.")
    parser.add_argument("--model", required=True, help="ONNX model served by default (stored as ichseg-unet.onnx)")
    parser.add_argument("--out", default="build/model.tar.gz")
    parser.add_argument("--variant", action="append", default=[], help="further ONNX files (e.g. the fp16 export)")
    parser.add_argument("--card", help=f"model card (default: {CARD_NAME} beside --model, else rendered)")
    args = parser.parse_args(argv)
    try:
        packaged = package_model(args.model, args.out, args.variant, args.card)
    except (OSError, ValueError, DecodeError) as exc:  # missing, not ONNX, or without ichseg metadata
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "archive": str(packaged.archive),
                "bytes": packaged.archive.stat().st_size,
                "members": list(packaged.members),
                "model": packaged.metadata.name,
                "version": packaged.metadata.version,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
