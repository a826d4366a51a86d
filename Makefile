# ichseg: the two commands a newcomer needs are `make demo` and `make test`.
# Both bootstrap what they need on first run (virtual environments, pinned), then reuse it.

PYTHON ?= python3
PIP_FLAGS := --disable-pip-version-check --no-input -q
VENV := .venv
TRAIN_VENV := .venv-train
CHECKOV_VENV := .venv-checkov
HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
DEMO_OUT ?= demo-output
DEMO_ARGS ?=

.PHONY: demo test test-runtime test-training lint env train-env clean-env browser dicom-tools jre

demo: $(VENV)/.installed
	$(VENV)/bin/ichseg demo --out $(DEMO_OUT) $(DEMO_ARGS)

test: lint test-runtime test-training

env: $(VENV)/.installed
train-env: $(TRAIN_VENV)/.installed

lint: $(VENV)/.installed $(CHECKOV_VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/vulture
	$(VENV)/bin/cfn-lint template.yaml
	$(CHECKOV_VENV)/bin/checkov -f template.yaml --compact --quiet --skip-download

test-runtime: $(VENV)/.installed browser dicom-tools jre
	$(VENV)/bin/python -m pytest tests --ignore=tests/training -q

# The viewer's browser tests (tests/viewer/test_viewer.py) drive Debian's headless Chromium through
# its chromedriver; installed from the distribution when missing (CI runs as root on Debian), never
# downloaded by Selenium.
browser:
	command -v chromium >/dev/null && test -x /usr/bin/chromedriver || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver)

# Hospital integration tests (tests/gateway/test_pacs.py and the DICOM checks): a real PACS (Orthanc),
# dcmtk's storescu/echoscu and dicom3tools' dciodvfy (the DICOM standard's object validator), from the
# distribution when missing.
dicom-tools:
	command -v Orthanc >/dev/null && command -v storescu >/dev/null && command -v dciodvfy >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends orthanc dcmtk dicom3tools)

# openapi-generator-cli (tests/pipeline/test_generated_clients.py) runs its jar on a Java runtime;
# curl runs the commands `ichseg stack` prints (tests/infrastructure/test_local_stack.py).
jre:
	command -v java >/dev/null && command -v curl >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends default-jre-headless curl)

test-training: $(TRAIN_VENV)/.installed
	$(TRAIN_VENV)/bin/python -m pytest tests/training -q

# Runtime side: CLI, Lambda functions, local stack, inference server (no TensorFlow).
$(VENV)/.installed: requirements.txt requirements/*.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) pip==25.2
	$(VENV)/bin/pip install $(PIP_FLAGS) -r requirements.txt
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps -e .
	$(VENV)/bin/pip check
	touch $@

# Training/export side: TensorFlow 2.15 + Keras 2, Horovod built from source (5-8 min), tf2onnx,
# SageMaker SDK v2. Its pins conflict with the runtime side, hence its own environment.
$(TRAIN_VENV)/.installed: requirements/training.txt requirements/training-constraints.txt requirements/core.txt pyproject.toml
	test -x $(TRAIN_VENV)/bin/python || $(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install $(PIP_FLAGS) pip==25.2 wheel setuptools==75.8.0
	$(TRAIN_VENV)/bin/pip install $(PIP_FLAGS) -r requirements/training.txt -c requirements/training-constraints.txt
	$(HOROVOD_ENV) $(TRAIN_VENV)/bin/pip install $(PIP_FLAGS) --no-build-isolation \
		-c requirements/training-constraints.txt horovod==0.28.1
	$(TRAIN_VENV)/bin/pip install $(PIP_FLAGS) --no-deps -e .
	$(TRAIN_VENV)/bin/pip check
	touch $@

clean-env:
	rm -rf $(VENV) $(TRAIN_VENV) $(CHECKOV_VENV)

# Template tools, each in an environment of its own (.venv-<tool> from infrastructure/<tool>/
# requirements.txt), because each pins a dependency tree that conflicts with the runtime pins:
# checkov (the security scanner reviewers run on template.yaml; --skip-download: offline, no Prisma
# Cloud look-ups; skips are inline in template.yaml, each with its reason, docs/deploy.md) and the
# SAM CLI below.
.venv-%/.installed: infrastructure/%/requirements.txt
	test -x .venv-$*/bin/python || $(PYTHON) -m venv .venv-$*
	.venv-$*/bin/pip install $(PIP_FLAGS) pip==25.2
	.venv-$*/bin/pip install $(PIP_FLAGS) -r $<
	.venv-$*/bin/pip check
	touch $@

# `sam validate --lint`: aws-sam-cli pins its own boto3, cfn-lint and aws-sam-translator. Offline;
# no AWS credentials needed. (make test lints template.yaml with cfn-lint from .venv; this is the
# extra SAM-translator check.)
SAM_VENV := .venv-sam
.PHONY: sam-validate

sam-validate: $(SAM_VENV)/.installed
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} SAM_CLI_TELEMETRY=0 \
		$(SAM_VENV)/bin/sam validate --lint -t template.yaml
