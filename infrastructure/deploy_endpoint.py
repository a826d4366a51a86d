"""Deploy the ichseg endpoint on SageMaker: Model -> EndpointConfig -> Endpoint -> autoscaling.

    python -m infrastructure.deploy_endpoint \
        --image-uri 123456789012.dkr.ecr.eu-west-1.amazonaws.com/ichseg-endpoint:1.0.0 \
        --model-data s3://my-bucket/models/ichseg/model.tar.gz \
        --role arn:aws:iam::123456789012:role/ichseg-sagemaker --name ichseg \
        [--instance-type ml.g5.xlarge] [--min 1 --max 4] [--target-invocations 60] \
        [--canary-percent 25 --bake-seconds 600] [--model-file ichseg-unet-fp16.onnx] [--dry-run]

The image is ``infrastructure/endpoint/Dockerfile`` pushed to ECR; the model data is
``python -m model_export.packaging`` uploaded to S3.

Model and endpoint-configuration names carry a revision (a hash of everything deployed), so a
re-run with the same inputs changes nothing, and a changed input becomes a new configuration that
the existing endpoint is updated to. The scalable target is deregistered around such an update
(SageMaker refuses some updates of a variant under autoscaling) and registered again once the
endpoint is InService.

**Safe rollout.** An update uses SageMaker's deployment guardrails: blue/green, with a canary
(``--canary-percent`` of the new fleet takes traffic first, for ``--bake-seconds``) when the fleet
has two instances or more, all at once with the same baking period otherwise; and automatic
rollback to the old fleet when any rollback alarm fires during the rollout. The rollback alarms
are the endpoint's own, made here (:func:`rollback_alarm_requests`: the new variant's 5xx errors
and its model latency), plus any ``--rollback-alarm`` named. Rolling back by hand is deploying
the previous inputs again (docs/deploy.md, the runbook).

The endpoint is real-time and scales on ``SageMakerVariantInvocationsPerInstance`` (invocations
per minute per instance): the segment stage calls ``InvokeEndpoint``. Asynchronous inference is
not offered (no stage would call ``InvokeEndpointAsync``).

The core, :func:`deploy`, takes boto3 clients, so tests point them at moto.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
GPU_INFERENCE_AMI = "al2023-ami-sagemaker-inference-gpu-4-1"
"""NVIDIA driver 580 / CUDA 13.0: what onnxruntime-gpu 1.31 (CUDA 13) in the image needs. The
older SageMaker inference AMIs carry drivers 535/550 (CUDA 12.2/12.4), on which CUDA 13 cannot
start and the server would silently run on the CPU."""
MODEL_DIR = "/opt/ml/model"
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,51}$")
"""SageMaker names allow 63 characters; 11 are kept for the revision suffix."""


class DeployError(ValueError):
    """A deployment request that cannot work, with what to change."""


@dataclass(frozen=True)
class EndpointSpec:
    """Everything that defines one deployment of the endpoint."""

    name: str
    image_uri: str
    model_data: str
    role_arn: str
    instance_type: str = "ml.g5.xlarge"
    initial_instances: int = 1
    min_instances: int = 1
    max_instances: int = 4
    target_invocations_per_instance: float = 60.0
    """Invocations per minute per instance to hold (about half the measured maximum)."""
    canary_percent: int = 25
    """The share of the new fleet that takes traffic first, when the fleet has 2 instances or more."""
    bake_seconds: int = 600
    """How long each step of a rollout is watched by the rollback alarms before the next."""
    latency_alarm_ms: float = 5000.0
    """The new variant's p90 model latency (one batch) above which a rollout rolls back."""
    rollback_alarms: tuple[str, ...] = ()
    """Alarms of the caller's (e.g. the stack's) that also roll a rollout back."""
    model_file: str = "ichseg-unet.onnx"
    inference_ami_version: str | None = GPU_INFERENCE_AMI
    startup_health_check_timeout: int = 600
    """Seconds SageMaker waits for /ping to turn 200 (model download, session, warm-up)."""
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=lambda: {"project": "ichseg"})

    def validate(self) -> None:
        """Raise :class:`DeployError` for inputs AWS would reject later, or that would not work."""
        problems = []
        if len(self.name) > 52 or not _NAME.match(self.name):
            problems.append(f"--name {self.name!r}: letters, digits and hyphens, at most 52 characters")
        if not (self.model_data.startswith("s3://") and self.model_data.endswith(".tar.gz")):
            problems.append(f"--model-data {self.model_data!r}: expected s3://bucket/key/model.tar.gz")
        if not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+", self.role_arn):
            problems.append(f"--role {self.role_arn!r}: expected an IAM role ARN")
        if not self.instance_type.startswith("ml."):
            problems.append(f"--instance-type {self.instance_type!r}: SageMaker types start with 'ml.'")
        if not 1 <= self.min_instances <= self.max_instances:
            problems.append(
                f"--min {self.min_instances} --max {self.max_instances}: need 1 <= min <= max "
                "(scaling to zero needs a step policy on HasBacklogWithoutCapacity, not provided here)"
            )
        if not self.min_instances <= self.initial_instances <= self.max_instances:
            problems.append(f"initial instance count {self.initial_instances} is outside --min..--max")
        if not 1 <= self.canary_percent <= 50:
            problems.append(f"--canary-percent {self.canary_percent}: 1 to 50 (SageMaker's canary limit)")
        if not 0 <= self.bake_seconds <= 3600:
            problems.append(f"--bake-seconds {self.bake_seconds}: 0 to 3600")
        if "/" in self.model_file:
            problems.append(f"--model-file {self.model_file!r}: a file name inside model.tar.gz")
        if problems:
            raise DeployError("; ".join(problems))

    @property
    def revision(self) -> str:
        """10 hex digits that change whenever anything deployed changes."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    @property
    def model_name(self) -> str:
        return f"{self.name}-{self.revision}"

    @property
    def config_name(self) -> str:
        return f"{self.name}-{self.revision}"

    @property
    def resource_id(self) -> str:
        return f"endpoint/{self.name}/variant/{VARIANT}"

    @property
    def policy_name(self) -> str:
        return f"{self.name}-invocations-per-instance"

    @property
    def alarm_names(self) -> tuple[str, ...]:
        """The alarms that roll a rollout back: the endpoint's own two, then the caller's."""
        return (f"{self.name}-invocation-5xx", f"{self.name}-model-latency", *self.rollback_alarms)

    def _tags(self) -> list[dict[str, str]]:
        return [{"Key": k, "Value": v} for k, v in sorted(self.tags.items())]

    # The requests, exactly as sent (also what --dry-run prints).

    def create_model_request(self) -> dict[str, Any]:
        environment = {"ICHSEG_MODEL": f"{MODEL_DIR}/{self.model_file}", **self.environment}
        return {
            "ModelName": self.model_name,
            "ExecutionRoleArn": self.role_arn,
            "PrimaryContainer": {
                "Image": self.image_uri,
                "ModelDataUrl": self.model_data,
                "Environment": environment,
            },
            "Tags": self._tags(),
        }

    def create_endpoint_config_request(self) -> dict[str, Any]:
        variant: dict[str, Any] = {
            "VariantName": VARIANT,
            "ModelName": self.model_name,
            "InstanceType": self.instance_type,
            "InitialInstanceCount": self.initial_instances,
            "InitialVariantWeight": 1.0,
            "ContainerStartupHealthCheckTimeoutInSeconds": self.startup_health_check_timeout,
        }
        if self.inference_ami_version:
            variant["InferenceAmiVersion"] = self.inference_ami_version
        return {
            "EndpointConfigName": self.config_name,
            "ProductionVariants": [variant],
            "Tags": self._tags(),
        }

    def update_endpoint_request(self) -> dict[str, Any]:
        """Blue/green to the new configuration: a canary first on a fleet of 2 or more, rolled back
        automatically when a rollback alarm fires."""
        if self.initial_instances >= 2:
            traffic: dict[str, Any] = {
                "Type": "CANARY",
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": self.canary_percent},
                "WaitIntervalInSeconds": self.bake_seconds,
            }
        else:  # one instance cannot be split: the whole fleet switches, and is watched as long
            traffic = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": self.bake_seconds}
        return {
            "EndpointName": self.name,
            "EndpointConfigName": self.config_name,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": traffic,
                    "TerminationWaitInSeconds": self.bake_seconds,
                    "MaximumExecutionTimeoutInSeconds": 3600 + 2 * self.bake_seconds,
                },
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": name} for name in self.alarm_names]},
            },
        }

    def rollback_alarm_requests(self) -> list[dict[str, Any]]:
        """The endpoint's own rollback alarms (CloudWatch ``PutMetricAlarm``), on its variant."""
        dimensions = [{"Name": "EndpointName", "Value": self.name}, {"Name": "VariantName", "Value": VARIANT}]
        common = {
            "Namespace": "AWS/SageMaker",
            "Dimensions": dimensions,
            "Period": 60,
            "EvaluationPeriods": 2,
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
        }
        five_xx, latency, *_ = self.alarm_names
        return [
            {
                "AlarmName": five_xx,
                "AlarmDescription": "The endpoint answers 5xx: a rollout in progress rolls back",
                "MetricName": "Invocation5XXErrors",
                "Statistic": "Sum",
                "Threshold": 0.0,
                **common,
            },
            {
                "AlarmName": latency,
                "AlarmDescription": "The endpoint's p90 model latency is too high: a rollout in progress rolls back",
                "MetricName": "ModelLatency",
                "ExtendedStatistic": "p90",
                "Threshold": self.latency_alarm_ms * 1000,  # ModelLatency is in microseconds
                **common,
            },
        ]

    def scalable_target_request(self) -> dict[str, Any]:
        return {
            "ServiceNamespace": "sagemaker",
            "ResourceId": self.resource_id,
            "ScalableDimension": SCALABLE_DIMENSION,
            "MinCapacity": self.min_instances,
            "MaxCapacity": self.max_instances,
        }

    def scaling_policy_request(self) -> dict[str, Any]:
        metric: dict[str, Any] = {
            "TargetValue": self.target_invocations_per_instance,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        }
        # Out fast (a GPU instance takes minutes to come up), in slowly (avoid flapping on bursts).
        metric.update({"ScaleOutCooldown": 60, "ScaleInCooldown": 600})
        return {
            "PolicyName": self.policy_name,
            "ServiceNamespace": "sagemaker",
            "ResourceId": self.resource_id,
            "ScalableDimension": SCALABLE_DIMENSION,
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": metric,
        }

    def plan(self) -> dict[str, Any]:
        """Every request a deployment sends, keyed by API call (``create_endpoint`` the first time,
        ``update_endpoint`` later)."""
        return {
            "put_metric_alarm": self.rollback_alarm_requests(),
            "create_model": self.create_model_request(),
            "create_endpoint_config": self.create_endpoint_config_request(),
            "create_endpoint": {"EndpointName": self.name, "EndpointConfigName": self.config_name},
            "update_endpoint": self.update_endpoint_request(),
            "register_scalable_target": self.scalable_target_request(),
            "put_scaling_policy": self.scaling_policy_request(),
        }


@dataclass(frozen=True)
class DeployResult:
    endpoint_name: str
    endpoint_arn: str
    model_name: str
    config_name: str
    action: str
    """``created``, ``updated`` or ``unchanged``."""
    policy_arn: str


def _not_found(error: Exception) -> bool:
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    return code in {"ValidationException", "ValidationError", "ResourceNotFound"} and "ould not find" in str(error)


def _exists(describe: Any, **kwargs: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return describe(**kwargs)
    except ClientError as error:
        if _not_found(error):
            return None
        raise


def deploy(
    spec: EndpointSpec,
    sagemaker: Any,
    autoscaling: Any,
    cloudwatch: Any,
    *,
    wait_delay: int = 30,
    wait_attempts: int = 120,
) -> DeployResult:
    """Create (or update to) ``spec`` with the given boto3 ``sagemaker``, ``application-autoscaling``
    and ``cloudwatch`` clients.

    Idempotent: the model and configuration are created only if their revisioned names are new;
    the endpoint is created, updated to the new configuration (guarded, see the module doc), or
    left alone. The rollback alarms are put first (PutMetricAlarm overwrites: same request, same alarm).
    """
    spec.validate()
    for alarm in spec.rollback_alarm_requests():
        cloudwatch.put_metric_alarm(**alarm)
    if _exists(sagemaker.describe_model, ModelName=spec.model_name) is None:
        sagemaker.create_model(**spec.create_model_request())
    if _exists(sagemaker.describe_endpoint_config, EndpointConfigName=spec.config_name) is None:
        sagemaker.create_endpoint_config(**spec.create_endpoint_config_request())

    current = _exists(sagemaker.describe_endpoint, EndpointName=spec.name)
    if current is None:
        action = "created"
        sagemaker.create_endpoint(EndpointName=spec.name, EndpointConfigName=spec.config_name, Tags=spec._tags())
    elif current["EndpointConfigName"] != spec.config_name:
        action = "updated"
        _deregister_scaling(spec, autoscaling)
        sagemaker.update_endpoint(**spec.update_endpoint_request())
    else:
        action = "unchanged"

    # Application Auto Scaling only accepts a variant that exists, i.e. an InService endpoint.
    sagemaker.get_waiter("endpoint_in_service").wait(
        EndpointName=spec.name, WaiterConfig={"Delay": wait_delay, "MaxAttempts": wait_attempts}
    )
    autoscaling.register_scalable_target(**spec.scalable_target_request())
    policy = autoscaling.put_scaling_policy(**spec.scaling_policy_request())
    endpoint = sagemaker.describe_endpoint(EndpointName=spec.name)
    return DeployResult(
        endpoint_name=spec.name,
        endpoint_arn=endpoint["EndpointArn"],
        model_name=spec.model_name,
        config_name=spec.config_name,
        action=action,
        policy_arn=policy["PolicyARN"],
    )


def _deregister_scaling(spec: EndpointSpec, autoscaling: Any) -> None:
    targets = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[spec.resource_id])
    if targets["ScalableTargets"]:
        autoscaling.deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=spec.resource_id, ScalableDimension=SCALABLE_DIMENSION
        )


def _parse_environment(pairs: Sequence[str]) -> dict[str, str]:
    environment = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DeployError(f"--env {pair!r}: expected NAME=VALUE")
        environment[key] = value
    return environment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Deploy the ichseg endpoint on SageMaker (with autoscaling).")
    parser.add_argument("--image-uri", required=True, help="ECR image built from infrastructure/endpoint/Dockerfile")
    parser.add_argument("--model-data", required=True, help="s3://.../model.tar.gz from model_export.packaging")
    parser.add_argument("--role", required=True, help="SageMaker execution role ARN (reads the model data and ECR)")
    parser.add_argument("--name", default="ichseg", help="endpoint name")
    parser.add_argument("--instance-type", default="ml.g5.xlarge")
    parser.add_argument("--instances", type=int, help="initial instance count (default: --min)")
    parser.add_argument("--min", type=int, default=1, dest="min_instances")
    parser.add_argument("--max", type=int, default=4, dest="max_instances")
    parser.add_argument(
        "--target-invocations",
        type=float,
        default=60.0,
        help="real-time: invocations per minute per instance to scale at",
    )
    parser.add_argument("--canary-percent", type=int, default=25, help="rollout: the new fleet's share that goes first")
    parser.add_argument("--bake-seconds", type=int, default=600, help="rollout: how long each step is watched")
    parser.add_argument(
        "--rollback-alarm",
        action="append",
        default=[],
        metavar="ALARM",
        help="another CloudWatch alarm that rolls a rollout back (e.g. the stack's EndpointErrorsAlarm)",
    )
    parser.add_argument("--model-file", default="ichseg-unet.onnx", help="which ONNX file in model.tar.gz to serve")
    parser.add_argument(
        "--inference-ami",
        default=GPU_INFERENCE_AMI,
        help="SageMaker inference AMI (driver for CUDA 13); 'none' for SageMaker's default",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="container environment, e.g. ICHSEG_BATCH_SIZE=16",
    )
    parser.add_argument("--region", help="AWS region (default: the SDK's)")
    parser.add_argument("--endpoint-url", help="AWS API endpoint override (e.g. a moto server)")
    parser.add_argument("--dry-run", action="store_true", help="print the requests, call nothing")
    return parser


def spec_from_args(args: argparse.Namespace) -> EndpointSpec:
    """An :class:`EndpointSpec` from parsed command-line arguments."""
    return EndpointSpec(
        name=args.name,
        image_uri=args.image_uri,
        model_data=args.model_data,
        role_arn=args.role,
        instance_type=args.instance_type,
        initial_instances=args.instances if args.instances is not None else args.min_instances,
        min_instances=args.min_instances,
        max_instances=args.max_instances,
        target_invocations_per_instance=args.target_invocations,
        canary_percent=args.canary_percent,
        bake_seconds=args.bake_seconds,
        rollback_alarms=tuple(args.rollback_alarm),
        model_file=args.model_file,
        inference_ami_version=None if args.inference_ami.lower() == "none" else args.inference_ami,
        environment=_parse_environment(args.env),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
        spec.validate()
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(spec.plan(), indent=2))
        return 0

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.session.Session(region_name=args.region)
    clients = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    try:
        sagemaker = session.client("sagemaker", **clients)
        result = deploy(
            spec,
            sagemaker,
            session.client("application-autoscaling", **clients),
            session.client("cloudwatch", **clients),
        )
    except (BotoCoreError, ClientError) as exc:
        print(f"error: deployment failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
