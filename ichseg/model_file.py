"""Model metadata I/O inside ONNX files: written by export, read by packaging and evaluation (needs ``onnx``)."""

from __future__ import annotations

from pathlib import Path

import onnx

from ichseg.model_metadata import METADATA_KEY, ModelMetadata


def set_metadata(proto: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Store (or replace) the ichseg metadata and the model version in an ONNX model."""
    set_entries(proto, {METADATA_KEY: metadata.to_json(), "model_version": metadata.version})
    proto.doc_string = f"ichseg {metadata.name} {metadata.version}: {metadata.intended_use}"


def set_entries(proto: onnx.ModelProto, changes: dict[str, str]) -> None:
    """Add or replace ONNX metadata entries, keeping the others (sorted, so a re-stamp is byte-stable)."""
    entries = {p.key: p.value for p in proto.metadata_props}
    entries.update(changes)
    del proto.metadata_props[:]
    for key, value in sorted(entries.items()):
        proto.metadata_props.add(key=key, value=value)


def read_metadata(onnx_path: str | Path) -> ModelMetadata:
    """The metadata of an exported model."""
    proto = onnx.load(str(onnx_path))
    entries = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in entries:
        raise ValueError(f"{onnx_path} carries no ichseg metadata")
    return ModelMetadata.from_json(entries[METADATA_KEY])


def stamp_metadata(onnx_path: str | Path, metadata: ModelMetadata) -> None:
    """Rewrite the metadata of an exported model in place."""
    proto = onnx.load(str(onnx_path))
    set_metadata(proto, metadata)
    onnx.save(proto, str(onnx_path))
