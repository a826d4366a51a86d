"""The serverless pipeline's stages as plain functions with explicit inputs and outputs.

Each Lambda handler in ``functions/`` parses its event and calls one of these; the local stack,
the benchmark and the tests call the very same functions (through the same handlers).

- :func:`~ichseg.pipeline.api.create_scan`, :func:`~ichseg.pipeline.api.scan_status`: the app's API
- :func:`~ichseg.pipeline.split.split_scan_into_batches`: upload -> frame batches + segment messages
- :func:`~ichseg.pipeline.segment.segment_batch`: one batch -> endpoint -> its masks and frames in results/ and
  its rendered part; the last completes the job
- :func:`~ichseg.pipeline.assemble.assemble_results`: the parts joined -> video, report, contact sheet,
  DICOM SEG and SR, mirror
- :func:`~ichseg.pipeline.assemble.retry_mirror`: a DONE job's Firebase copy that missed the assembly's budget
- :func:`~ichseg.pipeline.failures.fail_job`, :func:`~ichseg.pipeline.failures.fail_overdue_jobs`: failure as a state

Names are imported lazily, so a function pays at cold start only for the modules it uses (the
API and the authorizer never load PyAV, OpenCV or highdicom). Nothing here imports onnxruntime or
TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AssembleMessage": "ichseg.pipeline.messages",
    "MirrorMessage": "ichseg.pipeline.messages",
    "PipelineConfig": "ichseg.pipeline.config",
    "PipelineContext": "ichseg.pipeline.context",
    "SegmentMessage": "ichseg.pipeline.messages",
    "UploadRef": "ichseg.pipeline.keys",
    "assemble_results": "ichseg.pipeline.assemble",
    "create_scan": "ichseg.pipeline.api",
    "fail_job": "ichseg.pipeline.failures",
    "fail_overdue_jobs": "ichseg.pipeline.failures",
    "retry_mirror": "ichseg.pipeline.assemble",
    "scan_status": "ichseg.pipeline.api",
    "segment_batch": "ichseg.pipeline.segment",
    "split_scan_into_batches": "ichseg.pipeline.split",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ichseg.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
