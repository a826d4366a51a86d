"""The ``ichseg`` command line: one sub-command per job, each a thin wrapper over the core.

Errors a user can cause end as one ``error: ...`` line on stderr and a non-zero exit code,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ichseg import __version__
from ichseg.errors import ScanError

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def inspect_command(args: argparse.Namespace) -> int:
    """Print the scan's format and geometry as one JSON object."""
    from ichseg.scan import read_scan

    scan = read_scan(args.file)
    print(json.dumps(scan.describe()))
    return 0


def preview_command(args: argparse.Namespace) -> int:
    """Write a windowed H.264 video and a contact sheet of a scan (no model involved)."""
    from ichseg.render import write_contact_sheet, write_h264
    from ichseg.scan import read_scan
    from ichseg.windowing import window_by_name, windowed_slices

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
    """Segment a scan with the ONNX model; write masks, overlay video, contact sheet and report."""
    from ichseg.inference import OnnxSegmenter, segment_scan
    from ichseg.scan import read_scan
    from ichseg.segmentation import build_report, write_outputs

    scan = read_scan(args.input)
    segmenter = OnnxSegmenter(args.model)
    slices, segmentation = segment_scan(scan, segmenter)
    report = build_report(
        scan.slice_ids, segmentation, segmenter.metadata, scan.pixel_spacing_mm, scan.slice_thickness_mm
    )
    paths = write_outputs(args.out, scan.slice_ids, slices, segmentation, report, model=segmenter.metadata)
    headline = ("finding", "hemorrhage_probability", "slices_with_hemorrhage", "subtypes", "volume_ml")
    summary = {k: report[k] for k in headline}
    print(json.dumps({**summary, **{k: str(v) for k, v in paths.items()}}))
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Run the whole pipeline locally on the committed sample scan, as the mobile app would use it."""
    from infrastructure.demo import run_demo

    return run_demo(Path(args.out))


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A handler imported only when its sub-command runs (keeps `ichseg inspect` fast and light)."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(args))

    return run


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
    segment.set_defaults(handler=segment_command)

    endpoint = commands.add_parser("endpoint", help="serve the model over HTTP (SageMaker container contract)")
    endpoint.add_argument("--host", default="127.0.0.1")
    endpoint.add_argument("--port", type=int, default=8080)
    endpoint.add_argument("--model", default=str(SHIPPED_MODEL), help="ONNX model (default: the shipped one)")
    endpoint.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    endpoint.set_defaults(handler=_lazy("model_export.server", "endpoint_command"))

    stack = commands.add_parser("stack", help="run the local stack (moto, storage emulator, endpoint, event pump, API)")
    stack.add_argument("--state-dir", default="build/local-stack", help="where the stack keeps its files")
    stack.set_defaults(handler=_lazy("infrastructure.local_stack", "stack_command"))

    demo = commands.add_parser("demo", help="run ichseg on the committed sample scan (CT-ICH patient 051)")
    demo.add_argument("--out", default="demo-output", help="output folder")
    demo.set_defaults(handler=demo_command)
    return parser


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
