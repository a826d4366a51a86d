"""Deployment: the SageMaker requests against moto's control plane, the image's Dockerfile, EC2 scripts.

moto's SageMaker keeps an old instance-type list (no ml.g5), so these deployments use ml.g4dn;
it also lacks UpdateEndpoint, which the update test answers in botocore's ``before-call`` hook
after botocore has validated the request against the real service model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto.server import ThreadedMotoServer

from infrastructure.deploy_endpoint import (
    GPU_INFERENCE_AMI,
    SCALABLE_DIMENSION,
    VARIANT,
    DeployError,
    EndpointSpec,
    deploy,
    main,
)

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infrastructure" / "endpoint" / "Dockerfile"
EC2 = REPO / "infrastructure" / "ec2"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/ichseg-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ichseg-endpoint:1.0.0"
MODEL_DATA = "s3://ichseg-models/ichseg/1.0.0/model.tar.gz"
CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url: str) -> tuple[Any, Any, Any]:
    # A clean slate for this module's three services in its account and region only: moto keeps one
    # state per process, and resetting a whole service's backends (or /moto-api/reset) wipes every
    # service of the session's other moto servers too, the local stack's queues and table included.
    from moto.backends import get_backend

    for service in ("sagemaker", "applicationautoscaling", "cloudwatch"):
        get_backend(service)[ACCOUNT][CREDENTIALS["region_name"]].reset()
    return (
        boto3.client("sagemaker", endpoint_url=moto_url, **CREDENTIALS),
        boto3.client("application-autoscaling", endpoint_url=moto_url, **CREDENTIALS),
        boto3.client("cloudwatch", endpoint_url=moto_url, **CREDENTIALS),
    )


def spec(**changes: Any) -> EndpointSpec:
    values: dict[str, Any] = {
        "name": "ichseg",
        "image_uri": IMAGE,
        "model_data": MODEL_DATA,
        "role_arn": ROLE,
        "instance_type": "ml.g4dn.xlarge",
    }
    values.update(changes)
    return EndpointSpec(**values)


def scaling_state(autoscaling: Any, resource_id: str) -> tuple[list[dict], list[dict]]:
    targets = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id])
    policies = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id)
    return targets["ScalableTargets"], policies["ScalingPolicies"]


# ------------------------------------------------------------------------------- SageMaker (moto)


def test_a_realtime_deploy_creates_model_config_endpoint_and_target_tracking_scaling(aws: tuple[Any, Any, Any]) -> None:
    sagemaker, autoscaling, cloudwatch = aws
    wanted = spec(
        min_instances=1, max_instances=3, target_invocations_per_instance=120.0, environment={"ICHSEG_BATCH_SIZE": "16"}
    )
    result = deploy(wanted, sagemaker, autoscaling, cloudwatch, wait_delay=1)
    assert result.action == "created"

    model = sagemaker.describe_model(ModelName=result.model_name)
    assert model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA
    assert model["PrimaryContainer"]["Environment"] == {
        "ICHSEG_MODEL": "/opt/ml/model/ichseg-unet.onnx",
        "ICHSEG_BATCH_SIZE": "16",
    }

    config = sagemaker.describe_endpoint_config(EndpointConfigName=result.config_name)
    (variant,) = config["ProductionVariants"]
    assert variant["VariantName"] == VARIANT and variant["ModelName"] == result.model_name
    assert variant["InstanceType"] == "ml.g4dn.xlarge" and variant["InitialInstanceCount"] == 1
    assert variant["InferenceAmiVersion"] == GPU_INFERENCE_AMI  # the driver that CUDA 13 needs
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 600
    assert "AsyncInferenceConfig" not in config

    endpoint = sagemaker.describe_endpoint(EndpointName="ichseg")
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == result.config_name
    assert result.endpoint_arn == endpoint["EndpointArn"]

    (target,), (policy,) = scaling_state(autoscaling, "endpoint/ichseg/variant/AllTraffic")
    assert target["ScalableDimension"] == SCALABLE_DIMENSION == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    assert policy["PolicyType"] == "TargetTrackingScaling" and policy["PolicyARN"] == result.policy_arn
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 120.0
    predefined = tracking["PredefinedMetricSpecification"]
    assert predefined == {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}
    assert tracking["ScaleOutCooldown"] < tracking["ScaleInCooldown"]


def test_deploying_the_same_inputs_again_changes_nothing(aws: tuple[Any, Any, Any]) -> None:
    sagemaker, autoscaling, cloudwatch = aws
    first = deploy(spec(), sagemaker, autoscaling, cloudwatch, wait_delay=1)
    again = deploy(spec(), sagemaker, autoscaling, cloudwatch, wait_delay=1)
    assert again.action == "unchanged"
    assert (again.model_name, again.config_name) == (first.model_name, first.config_name)
    assert len(sagemaker.list_models()["Models"]) == 1
    assert len(sagemaker.list_endpoint_configs()["EndpointConfigs"]) == 1


def test_changed_inputs_update_the_endpoint_with_scaling_deregistered_around_the_update(
    aws: tuple[Any, Any, Any],
) -> None:
    sagemaker, autoscaling, cloudwatch = aws
    first = deploy(spec(), sagemaker, autoscaling, cloudwatch, wait_delay=1)
    updates: list[tuple[dict, int]] = []

    def update_endpoint(params: dict, **_: Any) -> tuple[AWSResponse, dict]:
        targets, _ = scaling_state(autoscaling, "endpoint/ichseg/variant/AllTraffic")
        updates.append((json.loads(params["body"]), len(targets)))
        return AWSResponse(params["url"], 200, {}, None), {"EndpointArn": first.endpoint_arn}

    sagemaker.meta.events.register("before-call.sagemaker.UpdateEndpoint", update_endpoint)
    second = deploy(
        spec(image_uri=IMAGE.replace("1.0.0", "1.1.0"), max_instances=6),
        sagemaker,
        autoscaling,
        cloudwatch,
        wait_delay=1,
    )

    assert second.action == "updated" and second.config_name != first.config_name
    # Blue/green with automatic rollback on the endpoint's own alarms; one instance: all at once, baked.
    assert updates == [
        (
            {
                "EndpointName": "ichseg",
                "EndpointConfigName": second.config_name,
                "DeploymentConfig": {
                    "BlueGreenUpdatePolicy": {
                        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 600},
                        "TerminationWaitInSeconds": 600,
                        "MaximumExecutionTimeoutInSeconds": 4800,
                    },
                    "AutoRollbackConfiguration": {
                        "Alarms": [{"AlarmName": "ichseg-invocation-5xx"}, {"AlarmName": "ichseg-model-latency"}]
                    },
                },
            },
            0,
        )
    ]
    model = sagemaker.describe_model(ModelName=second.model_name)
    assert model["PrimaryContainer"]["Image"].endswith(":1.1.0")
    (target,), _ = scaling_state(autoscaling, "endpoint/ichseg/variant/AllTraffic")
    assert target["MaxCapacity"] == 6


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"model_data": "https://bucket/model.tar.gz"}, "--model-data"),
        ({"model_data": "s3://bucket/model.onnx"}, "--model-data"),
        ({"role_arn": "ichseg-role"}, "--role"),
        ({"name": "ichseg_endpoint"}, "--name"),
        ({"name": "x" * 53}, "--name"),
        ({"min_instances": 3, "max_instances": 2}, "--min"),
        ({"min_instances": 0, "initial_instances": 0}, "scaling to zero"),
        ({"instance_type": "g5.xlarge"}, "ml."),
        ({"canary_percent": 60}, "--canary-percent"),
        ({"bake_seconds": -1}, "--bake-seconds"),
        ({"model_file": "sub/dir.onnx"}, "--model-file"),
    ],
)
def test_inputs_that_cannot_work_are_refused_before_any_call(changes: dict, words: str) -> None:
    with pytest.raises(DeployError, match=re.escape(words)):
        deploy(spec(**changes), sagemaker=None, autoscaling=None, cloudwatch=None)


# ----------------------------------------------------------------------------------------- CLI

CLI = ["--image-uri", IMAGE, "--model-data", MODEL_DATA, "--role", ROLE, "--name", "ichseg"]


def test_dry_run_prints_every_request_and_calls_nothing(capsys: pytest.CaptureFixture) -> None:
    argv = [*CLI, "--dry-run", "--min", "2", "--max", "4", "--rollback-alarm", "ichseg-prod-EndpointErrorsAlarm"]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert list(plan) == [
        "put_metric_alarm",
        "create_model",
        "create_endpoint_config",
        "create_endpoint",
        "update_endpoint",
        "register_scalable_target",
        "put_scaling_policy",
    ]
    assert plan["create_endpoint_config"]["ProductionVariants"][0]["InstanceType"] == "ml.g5.xlarge"
    assert "AsyncInferenceConfig" not in plan["create_endpoint_config"]
    assert plan["register_scalable_target"]["MaxCapacity"] == 4
    # Two instances: a canary of 25 % takes traffic first; the stack's alarm rolls back too.
    deployment = plan["update_endpoint"]["DeploymentConfig"]
    assert deployment["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"] == {
        "Type": "CANARY",
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25},
        "WaitIntervalInSeconds": 600,
    }
    alarms = [a["AlarmName"] for a in deployment["AutoRollbackConfiguration"]["Alarms"]]
    assert alarms == ["ichseg-invocation-5xx", "ichseg-model-latency", "ichseg-prod-EndpointErrorsAlarm"]
    five_xx, latency = plan["put_metric_alarm"]
    assert (five_xx["MetricName"], five_xx["Statistic"], five_xx["Threshold"]) == ("Invocation5XXErrors", "Sum", 0.0)
    assert (latency["MetricName"], latency["ExtendedStatistic"], latency["Threshold"]) == ("ModelLatency", "p90", 5e6)
    assert five_xx["Dimensions"] == [
        {"Name": "EndpointName", "Value": "ichseg"},
        {"Name": "VariantName", "Value": "AllTraffic"},
    ]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--canary-percent", "80"], "--canary-percent"),
        (["--env", "NOEQUALS"], "NAME=VALUE"),
        (["--min", "2", "--max", "1"], "--min"),
    ],
)
def test_the_cli_explains_bad_arguments(extra: list[str], words: str, capsys: pytest.CaptureFixture) -> None:
    assert main([*CLI, *extra, "--dry-run"]) == 2
    assert words in capsys.readouterr().err


def test_the_cli_deploys_against_an_endpoint_url(
    aws: tuple[Any, Any, Any], moto_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    code = main(
        [
            *CLI,
            "--instance-type",
            "ml.g4dn.xlarge",
            "--region",
            "us-east-1",
            "--endpoint-url",
            moto_url,
            "--model-file",
            "ichseg-unet-fp16.onnx",
            "--inference-ami",
            "none",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["action"] == "created"
    sagemaker, _, cloudwatch = aws
    assert {a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]} == {
        "ichseg-invocation-5xx",
        "ichseg-model-latency",
    }
    container = sagemaker.describe_model(ModelName=result["model_name"])["PrimaryContainer"]
    assert container["Environment"]["ICHSEG_MODEL"] == "/opt/ml/model/ichseg-unet-fp16.onnx"
    variant = sagemaker.describe_endpoint_config(EndpointConfigName=result["config_name"])["ProductionVariants"][0]
    assert "InferenceAmiVersion" not in variant


# ---------------------------------------------------------------------------------- Dockerfile

# What each pinned onnxruntime-gpu links against (readelf -d on the wheel's CUDA provider library).
ORT_GPU_CUDA_MAJOR = {"1.31.1": 13}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in joined.splitlines() if line.strip()
    ]


def test_the_base_image_matches_the_cuda_major_that_onnxruntime_gpu_links() -> None:
    pins = dict(re.findall(r"^([\w-]+)==(\S+)", (REPO / "requirements" / "endpoint.txt").read_text(), re.M))
    cuda_major = ORT_GPU_CUDA_MAJOR[pins["onnxruntime-gpu"]]
    (base,) = [args for op, args in dockerfile_instructions() if op == "FROM"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu[\d.]+", base)
    assert match, f"expected an nvidia/cuda cuDNN runtime image, got {base}"
    assert int(match.group(1)) == cuda_major
    assert "onnxruntime" not in pins  # the CPU package would shadow the GPU one (same module)
    runtime = (REPO / "requirements" / "runtime.txt").read_text()
    assert "onnxruntime-gpu" not in runtime


def test_the_image_runs_serve_from_path_on_8080_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    copies = [args for op, args in instructions if op == "COPY"]
    assert "infrastructure/endpoint/serve /usr/local/bin/serve" in copies
    assert any("chmod 0755 /usr/local/bin/serve" in args for op, args in instructions if op == "RUN")
    assert ("EXPOSE", "8080") in instructions
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert ("ENTRYPOINT", "[]") in instructions and ("CMD", '["serve"]') in instructions
    assert any("python3.11 -m venv" in args for op, args in instructions if op == "RUN")
    assert any("-r requirements/endpoint.txt" in args for op, args in instructions if op == "RUN")
    # a GPU image that can only start on the CPU must fail its health check, not serve 50x slower
    assert any("ICHSEG_REQUIRE_GPU=1" in args for op, args in instructions if op == "ENV")


def test_everything_the_image_copies_exists_in_the_build_context() -> None:
    for op, args in dockerfile_instructions():
        if op == "COPY":
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_the_serve_script_starts_ichseg_endpoint_on_sagemakers_port() -> None:
    serve = REPO / "infrastructure" / "endpoint" / "serve"
    text = serve.read_text()
    assert os.access(serve, os.X_OK)
    assert re.search(r"^exec ichseg endpoint", text, re.M)
    assert "${SAGEMAKER_BIND_TO_PORT:-8080}" in text and "/opt/ml/model/ichseg-unet.onnx" in text
    subprocess.run(["bash", "-n", str(serve)], check=True)


# ------------------------------------------------------------------------------------------ EC2


def test_the_ec2_user_data_runs_the_same_image_with_gpus_on_8080() -> None:
    text = " ".join((EC2 / "user-data.sh").read_text().replace("\\\n", " ").split())
    run = text[text.index("docker run -d") :]
    assert run.index("--gpus all -p 8080:8080") < run.index('"${IMAGE_URI}" serve')
    assert '-v "${MODEL_DIR}:/opt/ml/model:ro"' in run
    for script in ("user-data.sh", "launch.sh"):
        subprocess.run(["bash", "-n", str(EC2 / script)], check=True)


def test_the_ec2_launch_script_fills_in_the_user_data(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "DRY_RUN": "1",
        "REGION": "eu-west-1",
        "IMAGE_URI": IMAGE,
        "MODEL_DATA": MODEL_DATA,
        "AMI_ID": "ami-0123",
        "SUBNET_ID": "subnet-0123",
        "SECURITY_GROUP_ID": "sg-0123",
        "INSTANCE_PROFILE": "ichseg-endpoint",
    }
    result = subprocess.run(["bash", str(EC2 / "launch.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert f'IMAGE_URI="{IMAGE}"' in result.stdout and f'MODEL_DATA="{MODEL_DATA}"' in result.stdout
    assert not re.search(r"@[A-Z_]+@", result.stdout)  # no placeholder left unfilled
    assert "aws ec2 run-instances" in result.stdout and "g5.xlarge" in result.stdout

    missing = subprocess.run(
        ["bash", str(EC2 / "launch.sh")], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=30
    )
    assert missing.returncode != 0 and "IMAGE_URI" in missing.stderr
