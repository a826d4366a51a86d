"""Launch ichseg training as a SageMaker training job: a TensorFlow image running Horovod over MPI.

    .venv-train/bin/python -m training.sagemaker_launcher \\
        --role arn:aws:iam::123456789012:role/SageMakerTraining \\
        --training-data s3://bucket/prefix/training-set-192.npz --output-path s3://bucket/models/ \\
        [--instance-type ml.g5.12xlarge] [--instance-count 2] [--spot] \\
        [--hyperparameters epochs=30 variant=attention batch_size=16] [--region eu-west-1] [--dry-run]

``--dry-run`` prints the exact CreateTrainingJob request as JSON (usable as ``aws sagemaker
create-training-job --cli-input-json``) and needs neither AWS credentials nor a network; without it the
job is created (``fit(wait=False)``) and its name printed.

What the job is, and why:

- Image: the SageMaker TensorFlow training image (GPU) for ``--framework-version`` (default 2.14, the
  newest one with Keras 2, which Horovod 0.28 needs; 2.16+ default to Keras 3) and ``--py-version``
  py310, resolved offline with ``sagemaker.image_uris``. AWS stopped installing Horovod in these images
  at TensorFlow 2.12 (aws/deep-learning-containers Dockerfiles: 2.11 has ``horovod==0.26.1``, 2.12-2.18
  none), so ``requirements.txt`` adds ``horovod==0.28.1`` and the job's environment sets the Horovod build
  flags (TensorFlow + MPI, NCCL on GPU instances) plus ``PIP_NO_BUILD_ISOLATION=0`` so that its build sees
  the image's TensorFlow. The toolkit runs that install on every host before mpirun; it takes minutes.
  ``--image-uri`` replaces the image with one that already holds TensorFlow 2.x/Keras 2, Horovod and the
  sagemaker-training toolkit; Horovod is then not installed.
- Python: those images run Python 3.10; the ichseg core needs 3.11 (``requires-python`` in
  pyproject.toml; its closed sets are ``enum.StrEnum``, reached via training.training_set ->
  ichseg.windowing -> ichseg.scan). Jobs on the stock image fail at import: use ``--image-uri`` with a
  Python 3.11 image.
- Code: ``source_dir`` is a staged folder, not the repository (see ``stage_source``), uploaded by the SDK to
  ``<output-path>/<job>/source/sourcedir.tar.gz``; ``entry_point`` is ``training/sagemaker_entry.py``.
- Distribution: ``{"mpi": {"enabled": True, "processes_per_host": <GPUs per instance>, ...}}``; every
  rank reads the same ``training`` channel (FullyReplicated) and train.py shards it by rank.
- Data: one S3 channel named ``training`` holding the .npz training set (File mode).
- The SDK's debugger hook, profiler, ``--model_dir`` argument and telemetry are switched off: train.py
  uses none of them, and telemetry is an unasked-for request to AWS from a medical-imaging project.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.sagemaker_entry import HYPERPARAMETERS, VARIANT_CHOICES

if TYPE_CHECKING:
    import boto3
    import sagemaker
    from sagemaker.inputs import TrainingInput
    from sagemaker.tensorflow import TensorFlow

# boto3 and the SageMaker SDK are imported where used: importing the SDK already logs to stdout
# ("sagemaker.config INFO - ..."), so the CLI must set up logging first to keep stdout for the JSON.

log = logging.getLogger("ichseg.sagemaker_launcher")

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINT = "training/sagemaker_entry.py"
SOURCE_PACKAGES = ("ichseg", "training")
"""What the container needs to import: train.py reaches only these two packages."""
CORE_REQUIREMENTS = REPO / "requirements" / "core.txt"
HOROVOD_REQUIREMENT = "horovod==0.28.1"

TRAINING_CHANNEL = "training"
NPZ_CONTENT_TYPE = "application/x-npz"
DEFAULT_REGION = "eu-west-1"
DEFAULT_INSTANCE_TYPE = "ml.g5.12xlarge"
DEFAULT_FRAMEWORK_VERSION = "2.14"
DEFAULT_PY_VERSION = "py310"
DEFAULT_MAX_RUN = 24 * 3600
DEFAULT_VOLUME_SIZE_GB = 50
DEFAULT_BASE_JOB_NAME = "ichseg"
DEFAULT_MPI_OPTIONS = "-verbose -x HOROVOD_MPI_THREADS_DISABLE=1 --NCCL_DEBUG WARN"
"""Custom mpirun options. NCCL_DEBUG is set with the toolkit's own ``--NCCL_DEBUG`` option: the toolkit
already exports ``-x NCCL_DEBUG=INFO`` itself, and a second ``-x NCCL_DEBUG=...`` would compete with it."""

METRIC_DEFINITIONS = [
    # Keras (verbose=2, rank 0) prints one line per epoch: "2/2 - 4s - loss: 2.0011 - hemorrhage_loss: 0.5205 -
    # mask_loss: 1.7409 - ... - val_loss: 1.5271 - ... - val_mask_dice: 0.0462 - val_mask_iou: 0.0238 - lr: 0.0010".
    {"Name": "train:loss", "Regex": r"- loss: ([0-9.]+(?:[eE][-+]?[0-9]+)?)"},
    {"Name": "validation:loss", "Regex": r"val_loss: ([0-9.]+(?:[eE][-+]?[0-9]+)?)"},
    {"Name": "validation:dice", "Regex": r"val_\w*dice\w*: ([0-9.]+(?:[eE][-+]?[0-9]+)?)"},
]

# GPU counts the SDK's table (sagemaker/image_uri_config/instance_gpu_info.json) lacks.
_EXTRA_GPU_COUNTS = {
    "ml.g5.xlarge": 1,
    **{
        f"ml.{family}.{size}": gpus
        for family in ("g6", "g6e")
        for size, gpus in (
            ("xlarge", 1),
            ("2xlarge", 1),
            ("4xlarge", 1),
            ("8xlarge", 1),
            ("16xlarge", 1),
            ("12xlarge", 4),
            ("24xlarge", 4),
            ("48xlarge", 8),
        )
    },
}
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")


class LaunchError(ValueError):
    """A launch that cannot work as asked (bad ARN, URI, hyperparameter...), caught before AWS is called."""


@dataclass
class LaunchConfig:
    """Everything that decides the training job; defaults are the intended production setup."""

    role: str
    training_data: str
    output_path: str
    region: str = DEFAULT_REGION
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    processes_per_host: int | None = None
    """MPI ranks per instance; None: one per GPU (one per instance on CPU instances)."""
    framework_version: str = DEFAULT_FRAMEWORK_VERSION
    py_version: str = DEFAULT_PY_VERSION
    image_uri: str | None = None
    hyperparameters: dict[str, int | float | str] = field(default_factory=dict)
    spot: bool = False
    max_run: int = DEFAULT_MAX_RUN
    max_wait: int | None = None
    """Spot only: how long to wait for capacity plus run; None: twice max_run."""
    checkpoint_s3_uri: str | None = None
    volume_size: int = DEFAULT_VOLUME_SIZE_GB
    job_name: str | None = None
    base_job_name: str = DEFAULT_BASE_JOB_NAME
    tags: dict[str, str] = field(default_factory=lambda: {"project": "ichseg"})
    environment: dict[str, str] = field(default_factory=dict)
    mpi_options: str = DEFAULT_MPI_OPTIONS

    def validate(self) -> None:
        """Raise LaunchError for anything SageMaker would reject later, or accept and then fail on."""
        if not _ROLE_ARN.match(self.role):
            raise LaunchError(f"--role must be an IAM role ARN (arn:aws:iam::<account>:role/<name>), got {self.role!r}")
        for name, uri in (("--training-data", self.training_data), ("--output-path", self.output_path)):
            if not _S3_URI.match(uri):
                raise LaunchError(f"{name} must be an s3:// URI, got {uri!r}")
        if self.checkpoint_s3_uri is not None and not _S3_URI.match(self.checkpoint_s3_uri):
            raise LaunchError(f"--checkpoint-s3-uri must be an s3:// URI, got {self.checkpoint_s3_uri!r}")
        if self.instance_count < 1:
            raise LaunchError("--instance-count must be at least 1")
        if self.processes_per_host is not None and self.processes_per_host < 1:
            raise LaunchError("--processes-per-host must be at least 1")
        if self.max_run < 1:
            raise LaunchError("--max-run must be positive")
        if self.volume_size < 1:
            raise LaunchError("--volume-size must be at least 1 (GB)")
        if self.max_wait is not None and not self.spot:
            raise LaunchError("--max-wait only applies to --spot jobs")
        if self.spot and self.spot_max_wait < self.max_run:
            raise LaunchError("--max-wait must be at least --max-run (it includes the time spent running)")
        validate_hyperparameters(self.hyperparameters)

    @property
    def spot_max_wait(self) -> int:
        """MaxWaitTimeInSeconds for a spot job."""
        return self.max_wait if self.max_wait is not None else 2 * self.max_run

    @property
    def gpus_per_instance(self) -> int:
        """GPUs on one instance of ``instance_type`` (0 for CPU instances)."""
        return gpu_count(self.instance_type, self.region)

    @property
    def ranks_per_host(self) -> int:
        """MPI processes (Horovod ranks) started on each instance."""
        return self.processes_per_host or max(self.gpus_per_instance, 1)

    @property
    def install_horovod(self) -> bool:
        """The stock TensorFlow images ship no Horovod; a custom image is expected to."""
        return self.image_uri is None


def gpu_count(instance_type: str, region: str = DEFAULT_REGION) -> int:
    """GPUs of a SageMaker instance type, from the SDK's table; 0 for CPU families; LaunchError if unknown."""
    from sagemaker import instance_types_gpu_info

    table = instance_types_gpu_info.retrieve(region) or instance_types_gpu_info.retrieve(DEFAULT_REGION)
    if instance_type in table:
        return int(table[instance_type]["Count"])
    if instance_type in _EXTRA_GPU_COUNTS:
        return _EXTRA_GPU_COUNTS[instance_type]
    family = instance_type.removeprefix("ml.").split(".")[0]
    if family.startswith(("p", "g")):
        raise LaunchError(f"unknown GPU count for {instance_type}: pass --processes-per-host")
    return 0


def parse_key_values(items: list[str], what: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LaunchError(f"{what} must be KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_hyperparameters(items: list[str]) -> dict[str, int | float | str]:
    """``["epochs=30", "batch-size=16"]`` -> ``{"epochs": 30, "batch_size": 16}``, typed as TrainConfig's fields.

    Typed values matter: the SDK JSON-encodes each one (30 -> "30", "attention" -> "\\"attention\\"") and the
    container decodes them back, so a number must not travel as a string.
    """
    typed: dict[str, int | float | str] = {}
    for key, value in parse_key_values(items, "--hyperparameters").items():
        name = key.replace("-", "_")
        if name not in HYPERPARAMETERS:
            raise LaunchError(f"unknown hyperparameter {key!r}; known: {', '.join(HYPERPARAMETERS)}")
        try:
            typed[name] = HYPERPARAMETERS[name](value)
        except ValueError as error:
            raise LaunchError(f"hyperparameter {key}={value!r}: {error}") from None
    validate_hyperparameters(typed)
    return typed


def validate_hyperparameters(hyperparameters: dict[str, int | float | str]) -> None:
    """Names, types and ranges the container would otherwise reject after minutes of start-up."""
    for name, value in hyperparameters.items():
        kind = HYPERPARAMETERS.get(name)
        if kind is None:
            raise LaunchError(f"unknown hyperparameter {name!r}; known: {', '.join(HYPERPARAMETERS)}")
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            continue
        if type(value) is not kind:
            raise LaunchError(f"hyperparameter {name} must be {kind.__name__}, got {value!r}")
    if "variant" in hyperparameters and hyperparameters["variant"] not in VARIANT_CHOICES:
        raise LaunchError(f"variant must be one of {', '.join(VARIANT_CHOICES)}, got {hyperparameters['variant']!r}")
    for name in ("base_filters", "depth", "epochs", "batch_size", "steps_per_epoch", "positive_oversampling"):
        if name in hyperparameters and int(hyperparameters[name]) < 1:
            raise LaunchError(f"hyperparameter {name} must be at least 1")
    if float(hyperparameters.get("learning_rate", 1.0)) <= 0:
        raise LaunchError("hyperparameter learning_rate must be positive")
    if float(hyperparameters.get("slice_loss_weight", 0.0)) < 0:
        raise LaunchError("hyperparameter slice_loss_weight must not be negative")


def staged_requirements(install_horovod: bool) -> str:
    """The requirements.txt the training toolkit installs in the container.

    The core library's pins, plus a numpy<2 guard (the image's TensorFlow is built against numpy 1.x;
    pip then leaves it alone) and Horovod where the image lacks it.
    """
    lines = [
        "# Generated by training/sagemaker_launcher.py; installed by the SageMaker training toolkit on every host.",
        f"# From {CORE_REQUIREMENTS.relative_to(REPO)}:",
    ]
    for line in CORE_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    lines.append("numpy<2")
    if install_horovod:
        lines.append(HOROVOD_REQUIREMENT)
    return "\n".join(lines) + "\n"


def stage_source(destination: Path, install_horovod: bool = True) -> Path:
    """Copy what the container runs into ``destination`` (the estimator's source_dir) and return it.

    The repository itself cannot be the source_dir: the SDK would tar and upload its virtual environments
    and build outputs. Layout: ``ichseg/``, ``training/`` (with the entry point) and ``requirements.txt``,
    which the toolkit pip-installs because the entry point is a plain script (no setup.py staged).
    """
    destination.mkdir(parents=True, exist_ok=True)
    for package in SOURCE_PACKAGES:
        shutil.copytree(REPO / package, destination / package, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    (destination / "requirements.txt").write_text(staged_requirements(install_horovod))
    return destination


def horovod_build_environment(gpu: bool) -> dict[str, str]:
    """Environment for ``pip install horovod`` in the container (the job's environment reaches the toolkit's pip)."""
    environment = {
        "HOROVOD_WITH_TENSORFLOW": "1",
        "HOROVOD_WITH_MPI": "1",
        "HOROVOD_WITHOUT_GLOO": "1",  # mpirun starts the ranks; Gloo would only lengthen the build
        "HOROVOD_WITHOUT_PYTORCH": "1",
        "HOROVOD_WITHOUT_MXNET": "1",
        # pip reads this variable inverted: "0" turns build isolation OFF, so Horovod's setup finds the
        # image's TensorFlow (an isolated build environment has none and the build fails).
        "PIP_NO_BUILD_ISOLATION": "0",
    }
    if gpu:
        environment["HOROVOD_GPU_OPERATIONS"] = "NCCL"
    return environment


def sdk_defaults(base: dict[str, Any] | None = None) -> dict[str, Any]:
    """SageMaker SDK defaults config (``base``, e.g. from the usual config files) with telemetry opted out.

    SDK 2.243 otherwise calls STS (for the account id) and an S3 telemetry endpoint after fit(), dry run
    included, swallowing any failure.
    """
    config = copy.deepcopy(base) if base else {}
    config.setdefault("SchemaVersion", "1.0")
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})
    modules["TelemetryOptOut"] = True
    return config


def build_estimator(config: LaunchConfig, session: sagemaker.Session, source_dir: Path) -> TensorFlow:
    """The TensorFlow estimator for ``config``, its code taken from the staged ``source_dir``."""
    from sagemaker.tensorflow import TensorFlow

    config.validate()
    gpus = config.gpus_per_instance
    environment = horovod_build_environment(gpu=gpus > 0) if config.install_horovod else {}
    environment.update(config.environment)
    output_path = config.output_path.rstrip("/") + "/"
    return TensorFlow(
        entry_point=ENTRY_POINT,
        source_dir=str(source_dir),
        framework_version=config.framework_version,
        py_version=config.py_version,
        image_uri=config.image_uri,
        role=config.role,
        instance_type=config.instance_type,
        instance_count=config.instance_count,
        volume_size=config.volume_size,
        distribution={
            "mpi": {
                "enabled": True,
                "processes_per_host": config.ranks_per_host,
                "custom_mpi_options": config.mpi_options,
            }
        },
        hyperparameters=dict(config.hyperparameters),
        output_path=output_path,
        # Keeps the source bundle under the output prefix (the SDK's default is the bucket's root).
        code_location=output_path.rstrip("/"),
        checkpoint_s3_uri=config.checkpoint_s3_uri,
        max_run=config.max_run,
        use_spot_instances=config.spot,
        max_wait=config.spot_max_wait if config.spot else None,
        base_job_name=config.base_job_name,
        tags=[{"Key": key, "Value": value} for key, value in config.tags.items()],
        environment=environment,
        metric_definitions=METRIC_DEFINITIONS,
        model_dir=False,
        debugger_hook_config=False,
        disable_profiler=True,
        sagemaker_session=session,
    )


def training_inputs(config: LaunchConfig) -> dict[str, TrainingInput]:
    """The ``training`` channel: the .npz copied whole to every host (train.py shards it by rank)."""
    from sagemaker.inputs import TrainingInput

    return {
        TRAINING_CHANNEL: TrainingInput(
            s3_data=config.training_data, content_type=NPZ_CONTENT_TYPE, distribution="FullyReplicated"
        )
    }


@dataclass
class SourceUpload:
    """The source bundle a dry run built and would have uploaded."""

    bucket: str
    key: str
    extra_args: dict[str, str] | None
    members: list[str]


@dataclass
class DryRun:
    """What a dry run produced: the CreateTrainingJob request and the source upload it implies."""

    request: dict[str, Any]
    source_upload: SourceUpload


class _RecordingSageMakerClient:
    """Stands in for the SageMaker API client in a dry run: keeps the request, sends nothing.

    It has only the one method the SDK calls to create a job; any other call fails loudly (AttributeError)
    instead of reaching AWS.
    """

    def __init__(self, region: str) -> None:
        self.region = region
        self.requests: list[dict[str, Any]] = []

    def create_training_job(self, **request: Any) -> dict[str, str]:
        self.requests.append(request)
        name = request["TrainingJobName"]
        return {"TrainingJobArn": f"arn:aws:sagemaker:{self.region}:000000000000:training-job/{name}"}


class _RecordingS3:
    """Stands in for the boto3 S3 resource the SDK uploads the source bundle with, in a dry run."""

    def __init__(self) -> None:
        self.uploads: list[SourceUpload] = []

    def Object(self, bucket: str, key: str) -> _RecordingS3Object:  # the boto3 resource's spelling
        return _RecordingS3Object(self, bucket, key)


class _RecordingS3Object:
    def __init__(self, s3: _RecordingS3, bucket: str, key: str) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key

    def upload_file(self, filename: str, ExtraArgs: dict[str, str] | None = None, **_: Any) -> None:
        with tarfile.open(filename) as tar:
            members = sorted(tar.getnames())
        self.s3.uploads.append(SourceUpload(self.bucket, self.key, ExtraArgs, members))


_PLACEHOLDER_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "dry-run",
    "AWS_SECRET_ACCESS_KEY": "dry-run",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_CLEARED_AWS_ENVIRONMENT = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@contextlib.contextmanager
def offline_aws(region: str) -> Iterator[boto3.Session]:
    """For a dry run: no AWS configuration but a region and placeholder keys; yields boto3's default session.

    Handing the SDK an offline session is not enough: SDK 2.243 makes sessions of its own from boto3's
    defaults, at import (``sagemaker.jumpstart.constants``) and in the estimator's constructor
    (``TensorBoardApp``), and with no credentials configured botocore's credential chain ends in a request
    to the EC2 metadata service. Placeholder keys in the environment stop the chain before any provider
    that reaches out; the environment and boto3's default session are restored on exit. (If the SDK is
    first imported in here, its JumpStart default session keeps the placeholder keys; JumpStart is not used.)
    """
    import boto3

    saved = {name: os.environ.get(name) for name in (*_PLACEHOLDER_AWS_ENVIRONMENT, *_CLEARED_AWS_ENVIRONMENT)}
    previous_default = boto3.DEFAULT_SESSION
    os.environ.update(_PLACEHOLDER_AWS_ENVIRONMENT)
    for name in _CLEARED_AWS_ENVIRONMENT:
        os.environ.pop(name, None)
    try:
        boto3.DEFAULT_SESSION = boto3.Session(
            region_name=region, aws_access_key_id="dry-run", aws_secret_access_key="dry-run"
        )
        yield boto3.DEFAULT_SESSION
    finally:
        boto3.DEFAULT_SESSION = previous_default
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _local_sdk_defaults(dry_run: bool) -> dict[str, Any]:
    from sagemaker.config.config import (
        ENV_VARIABLE_ADMIN_CONFIG_OVERRIDE,
        ENV_VARIABLE_USER_CONFIG_OVERRIDE,
        load_sagemaker_config,
    )

    if dry_run:
        for variable in (ENV_VARIABLE_ADMIN_CONFIG_OVERRIDE, ENV_VARIABLE_USER_CONFIG_OVERRIDE):
            if os.environ.get(variable, "").startswith("s3://"):
                raise LaunchError(f"--dry-run reads SDK defaults from local files only; {variable} points at S3")
    return sdk_defaults(load_sagemaker_config())


def dry_run(config: LaunchConfig, sagemaker_config: dict[str, Any] | None = None) -> DryRun:
    """Build the job exactly as ``launch`` would and return the request instead of sending it.

    Runs the SDK's real code path (image lookup, source tarball, request assembly) against a session
    whose SageMaker client and S3 resource only record, so no credentials and no network are needed.
    ``sagemaker_config`` replaces the SDK defaults read from the usual config files (tests pin it).
    """
    config.validate()
    client = _RecordingSageMakerClient(config.region)
    s3 = _RecordingS3()
    with offline_aws(config.region) as boto_session, tempfile.TemporaryDirectory(prefix="ichseg-source-") as staging:
        import sagemaker  # here, not at the top: importing the SDK already makes a session (see offline_aws)
        from sagemaker.utils import name_from_base

        defaults = sdk_defaults(sagemaker_config) if sagemaker_config is not None else _local_sdk_defaults(dry_run=True)
        session = sagemaker.Session(boto_session=boto_session, sagemaker_client=client, sagemaker_config=defaults)
        session.s3_resource = s3  # the SDK uploads the source bundle through this resource
        estimator = build_estimator(config, session, stage_source(Path(staging), config.install_horovod))
        job_name = config.job_name or name_from_base(config.base_job_name)
        estimator.fit(training_inputs(config), wait=False, job_name=job_name)
    if len(client.requests) != 1 or len(s3.uploads) != 1:
        raise RuntimeError(f"expected one job and one upload, got {len(client.requests)} and {len(s3.uploads)}")
    return DryRun(request=client.requests[0], source_upload=s3.uploads[0])


def launch(config: LaunchConfig) -> str:
    """Create the training job (without waiting for it) and return its name. Needs AWS credentials."""
    import boto3
    import sagemaker
    from sagemaker.utils import name_from_base

    config.validate()
    session = sagemaker.Session(
        boto_session=boto3.Session(region_name=config.region), sagemaker_config=_local_sdk_defaults(dry_run=False)
    )
    with tempfile.TemporaryDirectory(prefix="ichseg-source-") as staging:
        estimator = build_estimator(config, session, stage_source(Path(staging), config.install_horovod))
        job_name = config.job_name or name_from_base(config.base_job_name)
        estimator.fit(training_inputs(config), wait=False, job_name=job_name)
    return estimator.latest_training_job.name


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.sagemaker_launcher",
        description="Launch ichseg training on SageMaker (TensorFlow image, Horovod over MPI).",
    )
    parser.add_argument("--role", required=True, help="IAM role ARN the job runs as")
    parser.add_argument("--training-data", required=True, help="s3:// URI of the .npz training set")
    parser.add_argument("--output-path", required=True, help="s3:// prefix for model.tar.gz (and the source bundle)")
    parser.add_argument(
        "--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    )
    parser.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--processes-per-host", type=int, default=None, help="MPI ranks per instance (default: GPUs)")
    parser.add_argument("--framework-version", default=DEFAULT_FRAMEWORK_VERSION)
    parser.add_argument("--py-version", default=DEFAULT_PY_VERSION)
    parser.add_argument("--image-uri", default=None, help="training image holding TF 2.x/Keras 2 and Horovod")
    parser.add_argument(
        "--hyperparameters",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=f"TrainConfig values: {', '.join(HYPERPARAMETERS)}",
    )
    parser.add_argument("--spot", action="store_true", help="managed spot training")
    parser.add_argument("--max-run", type=int, default=DEFAULT_MAX_RUN, help="seconds")
    parser.add_argument("--max-wait", type=int, default=None, help="spot only, seconds (default: 2 x max-run)")
    parser.add_argument("--checkpoint-s3-uri", default=None)
    parser.add_argument("--volume-size", type=int, default=DEFAULT_VOLUME_SIZE_GB, help="GB per instance")
    parser.add_argument("--job-name", default=None)
    parser.add_argument("--base-job-name", default=DEFAULT_BASE_JOB_NAME)
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="added to project=ichseg")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="container environment")
    parser.add_argument("--mpi-options", default=DEFAULT_MPI_OPTIONS, help="custom mpirun options")
    parser.add_argument("--dry-run", action="store_true", help="print the CreateTrainingJob request; no AWS calls")
    return parser


def config_from_args(args: argparse.Namespace) -> LaunchConfig:
    """LaunchConfig from the parsed command line (LaunchError on bad input)."""
    return LaunchConfig(
        role=args.role,
        training_data=args.training_data,
        output_path=args.output_path,
        region=args.region,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        processes_per_host=args.processes_per_host,
        framework_version=args.framework_version,
        py_version=args.py_version,
        image_uri=args.image_uri,
        hyperparameters=parse_hyperparameters(args.hyperparameters),
        spot=args.spot,
        max_run=args.max_run,
        max_wait=args.max_wait,
        checkpoint_s3_uri=args.checkpoint_s3_uri,
        volume_size=args.volume_size,
        job_name=args.job_name,
        base_job_name=args.base_job_name,
        tags={"project": "ichseg", **parse_key_values(args.tag, "--tag")},
        environment=parse_key_values(args.env, "--env"),
        mpi_options=args.mpi_options,
    )


def _sdk_logs_to_stderr() -> None:
    """Keep stdout for --dry-run's JSON: SDK 2.243 logs config lookups ("sagemaker.config INFO - ...") to stdout.

    The SDK adds its stdout handler only while the "sagemaker" logger has none, so giving it one first wins.
    """
    sdk = logging.getLogger("sagemaker")
    if not sdk.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        sdk.addHandler(handler)
        sdk.propagate = False  # the root handler would print each line twice
    for handler in logging.getLogger("sagemaker.config").handlers:
        if type(handler) is logging.StreamHandler:  # one the SDK already added
            handler.setStream(sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """CLI: print the request (--dry-run) or create the job and print its name. Logs go to stderr."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    _sdk_logs_to_stderr()
    parser = _argument_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        if args.dry_run:
            result = dry_run(config)
            upload = result.source_upload
            log.info("source bundle: s3://%s/%s (%d files)", upload.bucket, upload.key, len(upload.members))
            print(json.dumps(result.request, indent=2))
        else:
            print(launch(config))
    except LaunchError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
