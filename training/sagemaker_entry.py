"""The script SageMaker runs inside the TensorFlow training container: environment -> TrainConfig -> train.

SageMaker's training toolkit (``sagemaker-training``, part of every SageMaker TensorFlow image) unpacks
the source bundle into /opt/ml/code, runs ``pip install -r requirements.txt`` there on every host, then
starts this file with the hyperparameters as ``--key value`` arguments::

    python training/sagemaker_entry.py --epochs 3 --variant attention                (no MPI)
    mpirun -np N ... python -m mpi4py training/sagemaker_entry.py --epochs 3 ...      (MPI: a rank per GPU)

The job itself is described by environment variables: ``SM_CHANNEL_TRAINING`` (the ``training``
channel, where the .npz training set was copied), ``SM_MODEL_DIR`` (uploaded as model.tar.gz when the
job ends), ``SM_HPS`` (hyperparameters as JSON), ``SM_FRAMEWORK_PARAMS`` (the ``sagemaker_*`` ones, e.g.
``sagemaker_mpi_enabled``), ``SM_HOSTS``, ``SM_CURRENT_HOST``, ``SM_NUM_GPUS``; mpirun adds
``OMPI_COMM_WORLD_SIZE``/``_RANK``/``_LOCAL_RANK``.

The source bundle is not the repository (its virtual environments and build outputs would be uploaded
too): ``training.sagemaker_launcher.stage_source`` copies the ``ichseg`` and ``training`` packages into a
temporary folder, writes a ``requirements.txt`` there with the core library's pins
(requirements/core.txt) plus Horovod (the stock TensorFlow images ship none from 2.12 on), and points
the estimator's ``source_dir`` at that folder; the toolkit installs it before MPI starts. Caveat, see the
launcher's docstring: the stock images run Python 3.10 and the ichseg core needs 3.11, so jobs need a
Python 3.11 image (``--image-uri``).

Nothing heavy is imported at module level: the launcher reuses ``HYPERPARAMETERS`` without TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.train import TrainConfig

log = logging.getLogger("ichseg.sagemaker_entry")

HYPERPARAMETERS: dict[str, type] = {
    "variant": str,
    "base_filters": int,
    "depth": int,
    "norm": str,
    "epochs": int,
    "batch_size": int,
    "learning_rate": float,
    "seed": int,
    "positive_oversampling": int,
    "real_mask_oversampling": int,
    "neighbour_dropout": float,
    "steps_per_epoch": int,
    "slice_loss_weight": float,
    "subtype_loss_weight": float,
    "max_minutes": float,
}
"""The TrainConfig fields a job may set, with their types (names as SageMaker passes them: ``--batch_size``)."""

VARIANT_CHOICES: tuple[str, ...] = ("unet", "resunet", "attention")
"""``training.model.VARIANTS``, repeated here so that reading it does not import TensorFlow."""

MPI_ENABLED = "sagemaker_mpi_enabled"


def _json_object(environ: Mapping[str, str], name: str) -> dict[str, object]:
    raw = environ.get(name)
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must hold a JSON object, got {raw!r}")
    return value


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def mpi_world(environ: Mapping[str, str]) -> tuple[int, int, int]:
    """(size, rank, local rank) as Open MPI's mpirun exports them; (1, 0, 0) outside mpirun.

    Horovod's own launcher (``horovodrun --gloo``, handy for trying this script locally) exports
    HOROVOD_SIZE/RANK/LOCAL_RANK instead; those are read when the Open MPI ones are absent.
    """

    def read(name: str, default: str) -> int:
        return int(environ.get(f"OMPI_COMM_WORLD_{name}") or environ.get(f"HOROVOD_{name}") or default)

    return read("SIZE", "1"), read("RANK", "0"), read("LOCAL_RANK", "0")


def runs_under_horovod(environ: Mapping[str, str]) -> bool:
    """True when this process is one rank of an MPI job, i.e. must train with Horovod.

    Either mpirun says there are several ranks, or the job enabled SageMaker's MPI launcher (then even a
    single rank goes through Horovod, so one code path serves 1 and N GPUs). The toolkit files
    ``sagemaker_mpi_enabled`` under SM_FRAMEWORK_PARAMS; SM_HPS is checked too for other launchers.
    """
    size, _, _ = mpi_world(environ)
    if size > 1:
        return True
    for name in ("SM_FRAMEWORK_PARAMS", "SM_HPS"):
        if _truthy(_json_object(environ, name).get(MPI_ENABLED, False)):
            return True
    return False


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="ichseg training inside a SageMaker TensorFlow container (hyperparameters as --key value).",
        allow_abbrev=False,  # a misspelt hyperparameter must fail, not silently match a longer one
    )
    for name, kind in HYPERPARAMETERS.items():
        # SageMaker passes the keys as given (the launcher uses TrainConfig's names: --batch_size);
        # the hyphenated spellings of training.train's CLI are accepted too.
        flags = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"])  # ordered, without duplicates
        choices = VARIANT_CHOICES if name == "variant" else None
        parser.add_argument(*flags, dest=name, type=kind, choices=choices, default=None)
    # The SDK's TensorFlow estimator passes --model_dir unless told not to; the model goes to SM_MODEL_DIR.
    parser.add_argument("--model_dir", "--model-dir", dest="model_dir", help=argparse.SUPPRESS)
    return parser


def config_from_environment(environ: Mapping[str, str], argv: list[str]) -> TrainConfig:
    """Map SageMaker's environment and the hyperparameter arguments to a TrainConfig (pure: reads nothing else).

    Hyperparameters come from SM_HPS and then from ``argv`` (which wins where both give one); keys that are
    not TrainConfig fields in SM_HPS are ignored, unknown arguments are an error. The job's context
    (hosts, GPUs, MPI world) is kept in ``extra`` so that the saved training summary records it.
    """
    args = vars(_argument_parser().parse_args(argv))  # before importing TensorFlow: bad arguments fail fast
    data = environ.get("SM_CHANNEL_TRAINING")
    if not data:
        raise ValueError("SM_CHANNEL_TRAINING is not set: the job needs a 'training' input channel")
    values: dict[str, object] = {
        name: HYPERPARAMETERS[name](value)
        for name, value in _json_object(environ, "SM_HPS").items()
        if name in HYPERPARAMETERS and value is not None
    }
    values.update({name: args[name] for name in HYPERPARAMETERS if args[name] is not None})
    if "variant" in values and values["variant"] not in VARIANT_CHOICES:
        raise ValueError(f"unknown variant {values['variant']!r}; choose one of {', '.join(VARIANT_CHOICES)}")

    from training.train import TrainConfig

    size, _, _ = mpi_world(environ)
    hosts = json.loads(environ.get("SM_HOSTS", "[]"))
    extra = {
        "sagemaker_job_name": environ.get("TRAINING_JOB_NAME", ""),
        "sagemaker_hosts": ",".join(hosts),
        "sagemaker_current_host": environ.get("SM_CURRENT_HOST", ""),
        "sagemaker_num_gpus": environ.get("SM_NUM_GPUS", "0"),
        "mpi_world_size": str(size),
    }
    return TrainConfig(
        data=data,
        out=environ.get("SM_MODEL_DIR", "/opt/ml/model"),
        horovod=runs_under_horovod(environ),
        # A spot job restarted by SageMaker finds its last epoch in /opt/ml/checkpoints: continue there.
        resume=True,
        extra=extra,
        **values,  # type: ignore[arg-type]
    )


def configure_gpus(local_rank: int | None) -> int:
    """Let TensorFlow grow GPU memory as needed and, under MPI, give each rank its own GPU.

    Must run before TensorFlow touches a GPU. Without it every rank on a host would reserve nearly all
    the memory of every GPU (TF's default) and the ranks would trip over each other; Horovod expects
    rank ``local_rank`` to see only GPU ``local_rank``. Returns the number of GPUs on the host.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus and local_rank is not None:
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")
    return len(gpus)


def main(argv: list[str] | None = None) -> None:
    """Entry point in the container: parse the environment, pin GPUs, train."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = config_from_environment(os.environ, sys.argv[1:] if argv is None else argv)
    size, rank, local_rank = mpi_world(os.environ)
    gpus = configure_gpus(local_rank if config.horovod else None)
    log.info(
        "host %s rank %d/%d (local %d), %d GPU(s) on the host, horovod=%s, data=%s, out=%s",
        os.environ.get("SM_CURRENT_HOST", "?"),
        rank,
        size,
        local_rank,
        gpus,
        config.horovod,
        config.data,
        config.out,
    )
    from training.train import train

    summary = train(config)
    log.info("trained %s slices/s over %s rank(s)", summary["slices_per_second"], summary["ranks"])


if __name__ == "__main__":
    # The toolkit runs this file as a script, which puts training/ (not the bundle root that holds the
    # ichseg and training packages) at the head of sys.path.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
