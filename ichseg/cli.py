"""The ``ichseg`` command line: one sub-command per job, each a thin wrapper over the core.

Errors a user can cause end as one ``error: ...`` line on stderr and a non-zero exit code,
never a traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichseg import __version__
from ichseg.errors import ScanError

if TYPE_CHECKING:
    import numpy as np

    from ichseg.model_metadata import ModelMetadata
    from ichseg.scan import DicomSeriesRef
    from ichseg.segmentation import Segmentation
    from ichseg.writers.report import Report

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
COMMAND_GROUP = "ichseg.commands"


def inspect_command(args: argparse.Namespace) -> int:
    """Print the scan's format and geometry as one JSON object."""
    from ichseg.readers import read_scan

    scan = read_scan(args.file)
    print(json.dumps(scan.describe()))
    return 0


def preview_command(args: argparse.Namespace) -> int:
    """Write a windowed H.264 video and a contact sheet of a scan (no model involved)."""
    from ichseg.readers import read_scan
    from ichseg.windowing import window_by_name, windowed_slices
    from ichseg.writers.render import write_contact_sheet, write_h264

    scan = read_scan(args.input)
    slices = windowed_slices(scan, window_by_name(args.window))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_h264(slices, out / "slices.mp4", fps=args.fps)
    write_contact_sheet(slices, out / "contact_sheet.png", labels=scan.slice_ids)
    print(
        json.dumps(
            {**scan.describe(), "video": str(out / "slices.mp4"), "contact_sheet": str(out / "contact_sheet.png")}
        )
    )
    return 0


def segment_command(args: argparse.Namespace) -> int:
    """Segment a scan with the ONNX model; write masks, overlay video, contact sheet and report, and for
    DICOM input the DICOM SEG and SR a PACS would get back (and with ``--overlay-series``, the
    secondary-capture series a ``?overlay`` site gets)."""
    from ichseg.inference import OnnxSegmenter, read_in_context, segment_scan
    from ichseg.readers import read_scan_and_headers
    from ichseg.scan_context import load_scan_head
    from ichseg.writers.outputs import write_outputs
    from ichseg.writers.report import build_report, headline

    read = read_scan_and_headers(args.input)
    scan = read.scan
    segmenter = OnnxSegmenter(args.model)
    slices, segmentation = segment_scan(scan, segmenter)
    context = read_in_context(segmentation, segmenter.metadata, load_scan_head(args.scan_head))
    report = build_report(
        scan.slice_ids,
        segmentation,
        segmenter.metadata,
        scan.pixel_spacing_mm,
        scan.slice_thickness_mm,
        scan.slice_extents_mm,
        scan.series,
        context,
    )
    paths: dict[str, Path | str] = dict(
        write_outputs(args.out, scan.slice_ids, slices, segmentation, report, model=segmenter.metadata)
    )
    if scan.dicom is not None:
        overlay_slices = list(slices) if args.overlay_series else None
        paths.update(
            _write_dicom_results(
                Path(args.out), read.dicom_headers, scan.dicom, segmentation, report, segmenter.metadata, overlay_slices
            )
        )
    summary = {**headline(report), "slices_with_hemorrhage": report["slices_with_hemorrhage"]}
    print(json.dumps({**summary, **{k: str(v) for k, v in paths.items()}}))
    return 0


def _write_dicom_results(
    out: Path,
    headers: Sequence[Any],
    series: DicomSeriesRef,
    segmentation: Segmentation,
    report: Report,
    model: ModelMetadata,
    overlay_slices: list[np.ndarray] | None,
) -> dict[str, Path | str]:
    """``seg.dcm`` and ``sr.dcm`` beside the report (and the overlay series' images in
    ``overlay_series/``), or the reason in ``dicom_unavailable``."""
    from ichseg.writers.dicom_results import OVERLAY_SERIES_FILE, dicom_results, local_job_id
    from ichseg.writers.dicom_seg import SegUnavailable, source_headers

    try:
        captured = source_headers(headers, series)
    except SegUnavailable as exc:
        return {"dicom_unavailable": f"no DICOM SEG: {exc}"}
    job_id = local_job_id(series, model.version)
    results = dicom_results(captured, segmentation.masks, report, model.name, model.version, job_id, overlay_slices)
    written: dict[str, Path | str] = {}
    for name, data in results.files.items():
        if name == OVERLAY_SERIES_FILE:  # a folder of .dcm files: what a viewer's import takes
            folder = out / name.removesuffix(".zip")
            folder.mkdir(exist_ok=True)
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                archive.extractall(folder)
            written[folder.name] = folder
            continue
        (out / name).write_bytes(data)
        written[name.removesuffix(".dcm")] = out / name
    if results.unavailable:
        written["dicom_unavailable"] = results.unavailable
    return written


def build_parser() -> argparse.ArgumentParser:
    from ichseg.paths import SHIPPED_MODEL
    from ichseg.windowing import DEFAULT_WINDOW, PRESETS

    parser = argparse.ArgumentParser(prog="ichseg", description="Intracranial hemorrhage segmentation in head CT.")
    parser.add_argument("--version", action="version", version=f"ichseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="print a scan's format, slice count and geometry as JSON")
    inspect.add_argument("file", help="video, slice image, zip, folder, DICOM or NIfTI")
    inspect.set_defaults(handler=inspect_command)

    preview = commands.add_parser("preview", help="write a scan's windowed video and contact sheet")
    preview.add_argument("input", help="any input `ichseg inspect` accepts")
    preview.add_argument("--out", required=True, help="output folder")
    preview.add_argument("--window", default=DEFAULT_WINDOW.name, choices=sorted(PRESETS), help="window for HU data")
    preview.add_argument("--fps", type=float, default=5.0)
    preview.set_defaults(handler=preview_command)

    segment = commands.add_parser("segment", help="segment hemorrhage in a scan with the ONNX model")
    segment.add_argument("input", help="any input `ichseg inspect` accepts")
    segment.add_argument("--out", required=True, help="output folder")
    segment.add_argument("--model", default=str(SHIPPED_MODEL), help="ONNX model (default: the shipped one)")
    segment.add_argument(
        "--scan-head", default=None, help="the model's scan head (.onnx; default: the shipped one, if it pairs)"
    )
    segment.add_argument(
        "--overlay-series",
        action="store_true",
        help="DICOM input: also write the overlay series (secondary captures with the outline burned in)",
    )
    segment.set_defaults(handler=segment_command)

    add_plugin_commands(commands)
    return parser


def add_plugin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Let the deployables above the core add their sub-commands (``endpoint``, ``stack``, ``demo``).

    They register through the ``ichseg.commands`` entry-point group (pyproject.toml), so the core
    never imports them: an image that carries only ``ichseg`` and ``serving`` (the GPU endpoint)
    simply has no ``stack`` command.
    """
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            add_command = entry.load()
        except ModuleNotFoundError:  # the package is declared but not in this image
            continue
        add_command(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ichseg`` console script."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ScanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the promise is "no traceback": say what failed instead
        print(f"error: unexpected failure ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
