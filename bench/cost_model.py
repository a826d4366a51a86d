"""What a scan costs on AWS, and what the stack costs per month when idle: the formula, its inputs
and the price table, printed so that each figure can be checked.

    .venv/bin/python bench/cost_model.py                      # a 32- and a 320-slice scan
    .venv/bin/python bench/cost_model.py --slices 60 --gpu-frames-per-second 150

Inputs, and where each comes from:

- each function's memory: ``template.yaml`` (read as the local stack reads it);
- each stage's seconds per scan: the pipeline benchmark's per-stage medians on a 2-core machine
  (``bench/README.md``, ``pipeline_bench.py --runs 5``: split, segment, assemble), scaled by the
  slice count; Lambda's vCPUs at 3008 MB are about this machine's, so they are a fair estimate;
- the endpoint's seconds: the slices / its throughput (``--gpu-frames-per-second``; the default is
  the CPU figure measured here, an upper bound: no GPU was measured);
- request counts per slice and per batch from the code's S3 layout (frames, parts, masks, plain
  frames, thumbnails; the manifest, the report, the video, the SEG and SR) and its messages.

Prices: AWS list prices, us-east-1, on-demand, as published in 2026 (the table below); check them
against the AWS pricing pages before quoting a figure, and change ``PRICES`` when they move.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRICES = {
    "lambda_gb_second": 0.0000166667,
    "lambda_request": 0.20 / 1e6,
    "s3_put": 0.005 / 1000,
    "s3_get": 0.0004 / 1000,
    "s3_gb_month": 0.023,
    "sqs_request": 0.40 / 1e6,
    "dynamodb_write": 0.625 / 1e6,
    "dynamodb_read": 0.125 / 1e6,
    "http_api_request": 1.00 / 1e6,
    "sagemaker_ml_g5_xlarge_hour": 1.408,
    "kms_key_month": 1.00,
    "cloudwatch_alarm_month": 0.10,
    "cloudwatch_dashboard_month": 3.00,
    "secret_month": 0.40,
}
"""US dollars, us-east-1 list prices (2026)."""

SECONDS_PER_SLICE = {"split": 0.0063, "segment_render": 0.0070, "assemble": 0.0028}
"""Lambda seconds per slice besides inference (bench/README.md, 320-slice scan: split 0.7 s +
split->segmenting 1.3 s; segment 13.4 s of which inference about 11.2 s; assemble 0.9 s)."""
CPU_FRAMES_PER_SECOND = 36.0
"""The endpoint's throughput measured on this 2-core machine (issue 20's benchmark)."""
BATCH_SLICES = 16
POLLS_PER_SCAN = 20
"""The app polls GET /v1/scans/{id} about every 3 s for a minute (or once after a push)."""


@dataclass(frozen=True)
class Line:
    item: str
    quantity: float
    unit_price: float

    @property
    def dollars(self) -> float:
        return self.quantity * self.unit_price


def memory_gb() -> dict[str, float]:
    """Each function's memory in GB, from template.yaml."""
    from infrastructure.cloud_template import CloudTemplate

    return {name: f.memory_mb / 1024 for name, f in CloudTemplate.load().functions.items()}


def alarm_count() -> int:
    """The alarms template.yaml creates (dead-letter queues, function errors, service alarms)."""
    from infrastructure.cloud_template import load_template

    resources = load_template(REPO / "template.yaml")["Resources"].values()
    return sum(resource["Type"] == "AWS::CloudWatch::Alarm" for resource in resources)


def scan_lines(slices: int, gpu_frames_per_second: float) -> list[Line]:
    """The bill of one scan of ``slices`` slices."""
    gb = memory_gb()
    batches = math.ceil(slices / BATCH_SLICES)
    inference = slices / gpu_frames_per_second
    lambda_seconds = {
        "split": SECONDS_PER_SLICE["split"] * slices,
        # The segment function waits for the endpoint, then renders its batch.
        "segment": inference + SECONDS_PER_SLICE["segment_render"] * slices,
        "assemble": SECONDS_PER_SLICE["assemble"] * slices,
        "api": 0.05 * (2 + POLLS_PER_SCAN),
    }
    puts = 3 * batches + 3 * slices + 8  # frames, parts, batch masks; mask + frame + thumbnail; finals
    gets = 2 * batches + batches + POLLS_PER_SCAN  # frames, parts (twice), the app's downloads
    return [
        Line(f"Lambda {name} ({gb[name]:.2f} GB x {sec:.2f} s)", gb[name] * sec, PRICES["lambda_gb_second"])
        for name, sec in lambda_seconds.items()
    ] + [
        Line("Lambda invocations", 1 + 2 * batches + 1 + 2 + POLLS_PER_SCAN, PRICES["lambda_request"]),
        Line(
            f"SageMaker ml.g5.xlarge ({inference:.1f} s of inference)",
            inference / 3600,
            PRICES["sagemaker_ml_g5_xlarge_hour"],
        ),
        Line("S3 PUT", puts, PRICES["s3_put"]),
        Line("S3 GET", gets, PRICES["s3_get"]),
        Line("SQS requests (send, receive, delete)", 3 * (1 + 2 * batches + 1), PRICES["sqs_request"]),
        Line("DynamoDB writes", 6 + batches, PRICES["dynamodb_write"]),
        Line("DynamoDB reads", 4 + 2 * batches + POLLS_PER_SCAN, PRICES["dynamodb_read"]),
        Line("HTTP API requests", 2 + POLLS_PER_SCAN, PRICES["http_api_request"]),
    ]


def idle_lines(always_on_endpoint: bool) -> list[Line]:
    """What the stack costs per month with no scan at all."""
    hours = 730
    lines = [
        Line("KMS key", 1, PRICES["kms_key_month"]),
        Line("CloudWatch alarms", alarm_count(), PRICES["cloudwatch_alarm_month"]),
        Line("CloudWatch dashboard", 1, PRICES["cloudwatch_dashboard_month"]),
        Line("Secrets Manager (Firebase service account)", 1, PRICES["secret_month"]),
        Line("Lambda watchdog (every 5 min, 0.5 GB x 0.5 s)", 8760 * 0.5 * 0.5, PRICES["lambda_gb_second"]),
    ]
    if always_on_endpoint:
        lines.append(
            Line("SageMaker ml.g5.xlarge, one instance, always on", hours, PRICES["sagemaker_ml_g5_xlarge_hour"])
        )
    return lines


def print_bill(title: str, lines: list[Line]) -> float:
    total = sum(line.dollars for line in lines)
    print(f"\n{title}")
    for line in lines:
        print(f"  {line.item:<62} {line.quantity:>12.4g} x ${line.unit_price:<12.6g} = ${line.dollars:.6f}")
    print(f"  {'total':<62} {'':>30}   ${total:.4f}")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[32, 320])
    parser.add_argument("--gpu-frames-per-second", type=float, default=CPU_FRAMES_PER_SECOND)
    args = parser.parse_args()
    print("Prices (USD, us-east-1 list, 2026):", ", ".join(f"{k}={v:.6g}" for k, v in PRICES.items()))
    for slices in args.slices:
        total = print_bill(f"One scan of {slices} slices", scan_lines(slices, args.gpu_frames_per_second))
        print(f"  per 1,000 scans: ${1000 * total:.2f}")
    print_bill("Idle month, endpoint scaled to zero (asynchronous or removed)", idle_lines(False))
    print_bill("Idle month, one real-time endpoint instance always on", idle_lines(True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
