"""The SageMaker launcher and the script it runs in the container, offline.

No AWS credentials and no network (every connection and DNS lookup is refused and recorded, and the tests
that reach the SDK check that none was attempted: the SDK swallows some failures, e.g. its telemetry), and
no training: the request the SDK would send is captured and checked field by field, and the container
side is checked by feeding ``config_from_environment`` the environment SageMaker sets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from training import sagemaker_launcher as launcher
from training.sagemaker_entry import HYPERPARAMETERS, VARIANT_CHOICES, config_from_environment, runs_under_horovod

ROLE = "arn:aws:iam::123456789012:role/SageMakerTraining"
DATA = "s3://ichseg-data/prefix/training-set-192.npz"
OUTPUT = "s3://ichseg-data/models/"
REGION = "eu-west-1"
ENTRY = "training/sagemaker_entry.py"
TF_GPU_IMAGE = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/tensorflow-training:2.14-gpu-py310"
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
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
def offline() -> Iterator[list[str]]:
    """No AWS credentials anywhere boto3 looks, and every network attempt refused; yields the attempts."""
    attempts: list[str] = []

    def refuse(what: str, target: object) -> None:
        attempts.append(f"{what} {target!r}")
        raise OSError(f"network blocked in tests: {what} {target!r}")

    with pytest.MonkeyPatch.context() as patch:
        for variable in CREDENTIAL_VARIABLES:
            patch.delenv(variable, raising=False)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws/credentials")
        patch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws/config")
        patch.setattr(socket.socket, "connect", lambda self, address: refuse("connect", address))
        patch.setattr(socket.socket, "connect_ex", lambda self, address: refuse("connect", address))
        patch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: refuse("resolve", host))
        yield attempts


GUARDED_LAUNCHER = """
import runpy, socket, sys
def refuse(*args, **kwargs):
    sys.stderr.write(f"NETWORK ATTEMPT {args!r}\\n")
    raise OSError("network blocked")
socket.socket.connect = socket.socket.connect_ex = lambda self, address: refuse(address)
socket.getaddrinfo = refuse
sys.argv[0] = "training.sagemaker_launcher"
runpy.run_module("training.sagemaker_launcher", run_name="__main__")
"""
"""``python -m training.sagemaker_launcher`` with every connection and DNS lookup refused and reported."""


@pytest.fixture(scope="module")
def cli_dry_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[str]]:
    """The CLI's dry run in a fresh interpreter without credentials, started first so that its ~10 s
    (interpreter, SDK import, SDK config checks) overlap the in-process tests."""
    home = tmp_path_factory.mktemp("home")
    admin_config = home / "sagemaker-config.yaml"
    admin_config.write_text("SchemaVersion: '1.0'\n")
    environment = {key: value for key, value in os.environ.items() if key not in CREDENTIAL_VARIABLES}
    environment.update(
        HOME=str(home),  # no ~/.aws, no ~/.config/sagemaker
        AWS_SHARED_CREDENTIALS_FILE=str(home / "missing-credentials"),
        AWS_CONFIG_FILE=str(home / "missing-config"),
        SAGEMAKER_ADMIN_CONFIG_OVERRIDE=str(admin_config),  # no host-wide SDK defaults either
        PYTHONPATH=str(REPO),
    )
    arguments = [
        "--role",
        ROLE,
        "--training-data",
        DATA,
        "--output-path",
        OUTPUT.rstrip("/"),
        "--region",
        REGION,
        "--hyperparameters",
        "epochs=3",
        "variant=attention",
        "--job-name",
        "ichseg-cli",
        "--dry-run",
    ]
    process = subprocess.Popen(
        [sys.executable, "-c", GUARDED_LAUNCHER, *arguments],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module", autouse=True)
def sdk_imported_offline(cli_dry_run: subprocess.Popen[str]) -> None:
    """Import the SDK as a dry run does, whichever test runs first: SDK 2.243 makes AWS sessions on import.

    (The fresh-interpreter CLI test covers the dry run doing that import itself; this fixture asks for
    ``cli_dry_run`` only so that the subprocess starts before anything else.)
    """
    with offline() as attempts, launcher.offline_aws(REGION):
        import sagemaker.tensorflow  # noqa: F401
    assert attempts == []


@pytest.fixture
def no_network() -> Iterator[list[str]]:
    with offline() as attempts:
        yield attempts
    assert attempts == []


@pytest.fixture(scope="module")
def spot_job() -> launcher.DryRun:
    """One dry run (they cost seconds: SDK 2.243 re-validates its config on every lookup) checked by many tests."""
    import boto3

    config = launcher.LaunchConfig(
        role=ROLE,
        training_data=DATA,
        output_path=OUTPUT,
        region=REGION,
        instance_count=2,
        hyperparameters=launcher.parse_hyperparameters(
            ["epochs=30", "variant=attention", "batch-size=8", "learning_rate=0.0005", "steps_per_epoch=200"]
        ),
        spot=True,
        max_run=7200,
        checkpoint_s3_uri="s3://ichseg-data/checkpoints/",
        job_name="ichseg-test-spot",
        tags={"project": "ichseg", "owner": "ml-team"},
        environment={"TF_CPP_MIN_LOG_LEVEL": "1"},
    )
    with offline() as attempts:
        result = launcher.dry_run(config, sagemaker_config={})
    assert attempts == []
    assert boto3.DEFAULT_SESSION is None  # the dry run's stand-in default session did not leak out
    return result


def test_request_is_the_tensorflow_gpu_training_image_in_file_mode(spot_job: launcher.DryRun) -> None:
    from sagemaker import image_uris

    algorithm = spot_job.request["AlgorithmSpecification"]
    expected = image_uris.retrieve(
        "tensorflow",
        REGION,
        version="2.14",
        py_version="py310",
        instance_type="ml.g5.12xlarge",
        image_scope="training",
    )
    assert algorithm["TrainingImage"] == expected == TF_GPU_IMAGE
    assert algorithm["TrainingInputMode"] == "File"
    assert {m["Name"] for m in algorithm["MetricDefinitions"]} == {"train:loss", "validation:loss", "validation:dice"}


def test_request_runs_horovod_over_mpi_one_rank_per_gpu(spot_job: launcher.DryRun) -> None:
    hyperparameters = spot_job.request["HyperParameters"]
    assert hyperparameters["sagemaker_mpi_enabled"] == "true"
    assert hyperparameters["sagemaker_mpi_num_of_processes_per_host"] == "4"  # ml.g5.12xlarge: 4 A10G
    options = json.loads(hyperparameters["sagemaker_mpi_custom_mpi_options"])
    assert options == launcher.DEFAULT_MPI_OPTIONS
    assert "-x HOROVOD_MPI_THREADS_DISABLE=1" in options and "--NCCL_DEBUG WARN" in options
    assert json.loads(hyperparameters["sagemaker_program"]) == "training/sagemaker_entry.py"
    assert "model_dir" not in hyperparameters  # the entry point writes to SM_MODEL_DIR itself


def test_request_carries_our_hyperparameters_json_encoded(spot_job: launcher.DryRun) -> None:
    hyperparameters = spot_job.request["HyperParameters"]
    ours = {key: value for key, value in hyperparameters.items() if not key.startswith("sagemaker_")}
    assert ours == {
        "epochs": "30",
        "variant": '"attention"',
        "batch_size": "8",
        "learning_rate": "0.0005",
        "steps_per_epoch": "200",
    }


def test_request_hyperparameters_reach_train_config_in_the_container(spot_job: launcher.DryRun) -> None:
    """Do what the training toolkit does with the request, then what the entry point does with that."""
    sent = spot_job.request["HyperParameters"]
    user = {key: json.loads(value) for key, value in sent.items() if not key.startswith("sagemaker_")}
    framework = {key: json.loads(value) for key, value in sent.items() if key.startswith("sagemaker_mpi")}
    argv = [part for key, value in user.items() for part in (f"--{key}", str(value))]
    environ = {
        "SM_CHANNEL_TRAINING": "/opt/ml/input/data/training",
        "SM_MODEL_DIR": "/opt/ml/model",
        "SM_HPS": json.dumps(user),
        "SM_FRAMEWORK_PARAMS": json.dumps(framework),
        "OMPI_COMM_WORLD_SIZE": "8",
    }
    config = config_from_environment(environ, argv)
    assert (config.epochs, config.variant, config.batch_size, config.steps_per_epoch) == (30, "attention", 8, 200)
    assert config.learning_rate == pytest.approx(0.0005)
    assert config.horovod


def test_request_reads_the_training_channel_from_s3(spot_job: launcher.DryRun) -> None:
    (channel,) = spot_job.request["InputDataConfig"]
    assert channel["ChannelName"] == "training"
    assert channel["ContentType"] == "application/x-npz"
    source = channel["DataSource"]["S3DataSource"]
    assert source["S3Uri"] == DATA
    assert source["S3DataDistributionType"] == "FullyReplicated"  # every rank reads all; train.py shards


def test_request_writes_model_and_source_under_the_output_path(spot_job: launcher.DryRun) -> None:
    request = spot_job.request
    assert request["OutputDataConfig"]["S3OutputPath"] == OUTPUT
    bundle = f"{OUTPUT}ichseg-test-spot/source/sourcedir.tar.gz"
    assert json.loads(request["HyperParameters"]["sagemaker_submit_directory"]) == bundle
    upload = spot_job.source_upload
    assert f"s3://{upload.bucket}/{upload.key}" == bundle
    assert upload.extra_args == {"ServerSideEncryption": "aws:kms"}


def test_request_resources_stopping_condition_role_and_spot(spot_job: launcher.DryRun) -> None:
    request = spot_job.request
    assert request["TrainingJobName"] == "ichseg-test-spot"
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert request["RoleArn"] == ROLE
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"] == {"S3Uri": "s3://ichseg-data/checkpoints/"}
    assert {"Key": "owner", "Value": "ml-team"} in request["Tags"]
    assert {"Key": "project", "Value": "ichseg"} in request["Tags"]


def test_request_environment_builds_horovod_against_the_image_tensorflow(spot_job: launcher.DryRun) -> None:
    environment = spot_job.request["Environment"]
    assert environment["HOROVOD_WITH_TENSORFLOW"] == "1"
    assert environment["HOROVOD_WITH_MPI"] == "1"
    assert environment["HOROVOD_GPU_OPERATIONS"] == "NCCL"
    assert environment["PIP_NO_BUILD_ISOLATION"] == "0"  # pip's inverted spelling: isolation off
    assert environment["TF_CPP_MIN_LOG_LEVEL"] == "1"


def test_request_leaves_out_debugger_and_profiler(spot_job: launcher.DryRun) -> None:
    assert "DebugHookConfig" not in spot_job.request
    assert spot_job.request["ProfilerConfig"] == {"DisableProfiler": True}
    json.dumps(spot_job.request)  # what --dry-run prints


def test_source_bundle_holds_the_packages_and_requirements_only(spot_job: launcher.DryRun) -> None:
    members = set(spot_job.source_upload.members)
    for needed in ("requirements.txt", "training/sagemaker_entry.py", "training/train.py", "ichseg/preprocess.py"):
        assert needed in members
    assert {member.split("/")[0] for member in members} == {"ichseg", "training", "requirements.txt"}
    assert not [member for member in members if "__pycache__" in member or member.endswith(".pyc")]


def test_staged_requirements_pin_the_core_library_and_add_horovod(tmp_path: Path) -> None:
    staged = launcher.stage_source(tmp_path / "stock", install_horovod=True)
    lines = (staged / "requirements.txt").read_text().splitlines()
    core = [line for line in (REPO / "requirements" / "core.txt").read_text().splitlines() if "==" in line]
    assert core and set(core) <= set(lines)
    assert "horovod==0.28.1" in lines and "numpy<2" in lines
    assert not any(line.startswith(("tensorflow", "keras")) for line in lines)  # the image's own
    custom = launcher.stage_source(tmp_path / "custom", install_horovod=False)
    assert "horovod==0.28.1" not in (custom / "requirements.txt").read_text()
    assert (staged / "training" / "sagemaker_entry.py").read_bytes() == (REPO / ENTRY).read_bytes()


def test_cli_dry_run_prints_the_request_as_json_on_stdout(cli_dry_run: subprocess.Popen[str]) -> None:
    """``python -m training.sagemaker_launcher --dry-run`` in a fresh interpreter, as a user runs it.

    A subprocess because the SDK makes AWS sessions and logs to stdout when it is first imported, and in
    this process it already was. Started with the module (see ``cli_dry_run``), it has run meanwhile.
    """
    stdout, stderr = cli_dry_run.communicate(timeout=120)
    result = subprocess.CompletedProcess(cli_dry_run.args, cli_dry_run.returncode, stdout, stderr)
    assert result.returncode == 0, result.stderr
    assert "NETWORK ATTEMPT" not in result.stderr
    request: dict[str, Any] = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert request["TrainingJobName"] == "ichseg-cli"
    assert request["AlgorithmSpecification"]["TrainingImage"] == TF_GPU_IMAGE
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert request["RoleArn"] == ROLE
    assert request["OutputDataConfig"]["S3OutputPath"] == OUTPUT
    assert request["InputDataConfig"][0]["ChannelName"] == "training"
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == DATA
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge"
    assert request["ResourceConfig"]["InstanceCount"] == 1
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": launcher.DEFAULT_MAX_RUN}
    assert "EnableManagedSpotTraining" not in request
    hyperparameters = request["HyperParameters"]
    assert hyperparameters["epochs"] == "3" and hyperparameters["variant"] == '"attention"'
    assert hyperparameters["sagemaker_mpi_enabled"] == "true"
    assert hyperparameters["sagemaker_mpi_num_of_processes_per_host"] == "4"
    assert json.loads(hyperparameters["sagemaker_program"]) == ENTRY
    assert "source bundle: s3://ichseg-data/models/ichseg-cli/source/sourcedir.tar.gz" in result.stderr


def test_cli_rejects_bad_input_before_calling_aws(no_network: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--role", ROLE, "--training-data", DATA, "--output-path", OUTPUT, "--dry-run"]
    cases = {
        "--role must be an IAM role ARN": ["--role", "SageMakerTraining"],
        "--training-data must be an s3:// URI": ["--training-data", "/data/training-set-192.npz"],
        "unknown hyperparameter 'epoch'": ["--hyperparameters", "epoch=3"],
        "variant must be one of": ["--hyperparameters", "variant=vnet"],
        "--max-wait must be at least --max-run": ["--spot", "--max-run", "3600", "--max-wait", "60"],
        "--max-wait only applies to --spot jobs": ["--max-wait", "7200"],
    }
    for message, extra in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            launcher.main(base + extra)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_metric_definitions_read_the_keras_epoch_line() -> None:
    import re

    # Rank 0's epoch line from a run of training/sagemaker_entry.py (train.py, verbose=2), as mpirun tags it.
    line = (
        "[1,0]<stdout>:2/2 - 4s - loss: 2.0011 - hemorrhage_loss: 0.5205 - mask_loss: 1.7409 - hemorrhage_auc: "
        "0.0000e+00 - mask_dice: 0.0174 - mask_iou: 0.0088 - val_loss: 1.5271 - val_hemorrhage_loss: 0.2088 - "
        "val_mask_loss: 1.4227 - val_hemorrhage_auc: 0.4762 - val_mask_dice: 0.0462 - val_mask_iou: 0.0238"
    )
    found = {m["Name"]: re.search(m["Regex"], line).group(1) for m in launcher.METRIC_DEFINITIONS}  # type: ignore[union-attr]
    assert found == {"train:loss": "2.0011", "validation:loss": "1.5271", "validation:dice": "0.0462"}


def test_parse_hyperparameters_types_values_as_train_config_does() -> None:
    parsed = launcher.parse_hyperparameters(["epochs=3", "base-filters=32", "learning_rate=1e-4", "variant=resunet"])
    assert parsed == {"epochs": 3, "base_filters": 32, "learning_rate": 1e-4, "variant": "resunet"}
    assert type(parsed["epochs"]) is int and type(parsed["learning_rate"]) is float
    for bad in (["epochs=three"], ["epochs"], ["depth=0"], ["seed=1.5"]):
        with pytest.raises(launcher.LaunchError):
            launcher.parse_hyperparameters(bad)


def test_gpu_count_drives_ranks_per_host() -> None:
    assert launcher.gpu_count("ml.g5.12xlarge") == 4
    assert launcher.gpu_count("ml.p4d.24xlarge") == 8
    assert launcher.gpu_count("ml.g5.xlarge") == 1  # missing from the SDK's own table
    assert launcher.gpu_count("ml.c5.xlarge") == 0
    with pytest.raises(launcher.LaunchError, match="--processes-per-host"):
        launcher.gpu_count("ml.g9.12xlarge")
    config = launcher.LaunchConfig(role=ROLE, training_data=DATA, output_path=OUTPUT, instance_type="ml.c5.4xlarge")
    assert config.ranks_per_host == 1
    assert dataclasses.replace(config, processes_per_host=3).ranks_per_host == 3
    assert "HOROVOD_GPU_OPERATIONS" not in launcher.horovod_build_environment(gpu=False)


def test_custom_image_skips_the_horovod_install(no_network: list[str]) -> None:
    """With --image-uri the image is expected to hold Horovod: no build flags, no horovod requirement."""
    custom = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ichseg-train:tf2.15-py311"
    config = launcher.LaunchConfig(role=ROLE, training_data=DATA, output_path=OUTPUT, image_uri=custom)
    assert not config.install_horovod
    assert "horovod" not in launcher.staged_requirements(config.install_horovod)


# --- the container side -------------------------------------------------------------------------------

SAGEMAKER_ENVIRONMENT = {
    "SM_CHANNEL_TRAINING": "/opt/ml/input/data/training",
    "SM_MODEL_DIR": "/opt/ml/model",
    "SM_HPS": json.dumps({"epochs": 3, "variant": "attention"}),
    "SM_FRAMEWORK_PARAMS": json.dumps(
        {
            "sagemaker_mpi_enabled": True,
            "sagemaker_mpi_num_of_processes_per_host": 4,
            "sagemaker_mpi_custom_mpi_options": launcher.DEFAULT_MPI_OPTIONS,
        }
    ),
    "SM_HOSTS": json.dumps(["algo-1", "algo-2"]),
    "SM_CURRENT_HOST": "algo-1",
    "SM_NUM_GPUS": "4",
    "TRAINING_JOB_NAME": "ichseg-2026-11-23-10-00-00-000",
    "OMPI_COMM_WORLD_SIZE": "8",
    "OMPI_COMM_WORLD_RANK": "5",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
}


def test_config_from_a_realistic_sagemaker_environment() -> None:
    from training.train import TrainConfig

    config = config_from_environment(SAGEMAKER_ENVIRONMENT, ["--epochs", "3", "--variant", "attention"])
    defaults = TrainConfig(data="", out="")
    assert config.data == "/opt/ml/input/data/training"
    assert config.out == "/opt/ml/model"
    assert config.epochs == 3 and config.variant == "attention"
    assert config.horovod is True
    assert (config.batch_size, config.learning_rate, config.depth) == (
        defaults.batch_size,
        defaults.learning_rate,
        defaults.depth,
    )
    assert config.extra == {
        "sagemaker_job_name": "ichseg-2026-11-23-10-00-00-000",
        "sagemaker_hosts": "algo-1,algo-2",
        "sagemaker_current_host": "algo-1",
        "sagemaker_num_gpus": "4",
        "mpi_world_size": "8",
    }


def test_arguments_win_over_sm_hps_and_both_spellings_work() -> None:
    argv = ["--epochs", "5", "--batch-size", "4", "--learning_rate", "0.01", "--model_dir", "s3://b/m"]
    config = config_from_environment(SAGEMAKER_ENVIRONMENT, argv)
    assert (config.epochs, config.batch_size, config.learning_rate) == (5, 4, 0.01)
    assert config.variant == "attention"  # from SM_HPS alone
    with pytest.raises(SystemExit):
        config_from_environment(SAGEMAKER_ENVIRONMENT, ["--epoch", "5"])  # no abbreviations
    with pytest.raises(SystemExit):
        config_from_environment(SAGEMAKER_ENVIRONMENT, ["--variant", "vnet"])
    with pytest.raises(ValueError, match="SM_CHANNEL_TRAINING"):
        config_from_environment({"SM_MODEL_DIR": "/opt/ml/model"}, [])


def test_horovod_only_under_mpi() -> None:
    single = {"SM_CHANNEL_TRAINING": "/opt/ml/input/data/training", "SM_HPS": "{}", "SM_FRAMEWORK_PARAMS": "{}"}
    assert not runs_under_horovod(single)
    assert not config_from_environment(single, []).horovod
    assert runs_under_horovod({**single, "OMPI_COMM_WORLD_SIZE": "8"})
    # One host, one GPU, MPI enabled: a single rank still goes through Horovod.
    assert runs_under_horovod({**single, "SM_FRAMEWORK_PARAMS": '{"sagemaker_mpi_enabled": true}'})
    assert not runs_under_horovod({**single, "SM_FRAMEWORK_PARAMS": '{"sagemaker_mpi_enabled": false}'})


def test_hyperparameter_schema_matches_train_config() -> None:
    import typing

    from training.model import VARIANTS
    from training.train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for name, kind in HYPERPARAMETERS.items():
        assert name in hints, name
        accepted = {kind, kind | None}
        if name == "variant":
            accepted.add(hints[name])  # Literal["unet", ...]
        assert hints[name] in accepted, (name, hints[name])
    assert VARIANT_CHOICES == VARIANTS
    # Paths and the process role are not hyperparameters (SageMaker passes data and weights as channels;
    # the entry point always resumes from /opt/ml/checkpoints when a spot job restarts).
    not_hyperparameters = {"data", "out", "horovod", "extra", "initial_weights", "initial_epoch", "resume"}
    assert set(hints) - set(HYPERPARAMETERS) == not_hyperparameters


def test_entry_main_trains_the_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() wiring, with train() replaced: the TrainConfig it gets comes from the environment and argv."""
    import training.train
    from training import sagemaker_entry

    single_host = {k: v for k, v in SAGEMAKER_ENVIRONMENT.items() if not k.startswith("OMPI_")}
    single_host["SM_FRAMEWORK_PARAMS"] = "{}"
    for name in [n for n in os.environ if n.startswith(("SM_", "OMPI_", "HOROVOD_"))]:
        monkeypatch.delenv(name)
    for name, value in single_host.items():
        monkeypatch.setenv(name, value)
    received = []

    def fake_train(config: Any) -> dict[str, object]:
        received.append(config)
        return {"slices_per_second": 1.0, "ranks": 1}

    monkeypatch.setattr(training.train, "train", fake_train)
    sagemaker_entry.main(["--epochs", "2", "--depth", "3"])
    (config,) = received
    assert (config.epochs, config.depth, config.variant, config.horovod) == (2, 3, "attention", False)
    assert config.data == "/opt/ml/input/data/training" and config.out == "/opt/ml/model"


def test_configure_gpus_counts_the_host_gpus() -> None:
    import tensorflow as tf

    from training.sagemaker_entry import configure_gpus

    # local_rank=None: memory growth only, the visible devices stay as they are for the other tests.
    assert configure_gpus(local_rank=None) == len(tf.config.list_physical_devices("GPU"))
