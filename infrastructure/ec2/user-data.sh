#!/bin/bash
# EC2 user data: run the ichseg endpoint image on a GPU instance, exactly as SageMaker would.
# launch.sh fills in the @...@ values; the instance needs an AMI with the NVIDIA driver (>= 580 for
# CUDA 13), Docker and the NVIDIA Container Toolkit (e.g. an AWS Deep Learning Base GPU AMI), the
# AWS CLI, and an instance profile that may read the model data, pull from ECR and write logs.
set -euo pipefail

IMAGE_URI="@IMAGE_URI@"
MODEL_DATA="@MODEL_DATA@"
REGION="@REGION@"
LOG_GROUP="@LOG_GROUP@"
MODEL_DIR=/opt/ml/model

exec > >(tee -a /var/log/ichseg-user-data.log) 2>&1
echo "ichseg endpoint: starting $(date -u +%FT%TZ)"

# CUDA 13 (onnxruntime-gpu 1.31) cannot start on an older driver: fail here, loudly, rather than
# serve silently on the CPU.
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)"
if [ "${driver%%.*}" -lt 580 ]; then
    echo "ichseg endpoint: NVIDIA driver ${driver} is older than 580 (CUDA 13); use a newer GPU AMI" >&2
    exit 1
fi

# The same layout SageMaker gives the container: model.tar.gz extracted into /opt/ml/model.
mkdir -p "${MODEL_DIR}"
aws s3 cp --region "${REGION}" "${MODEL_DATA}" /tmp/model.tar.gz
tar -xzf /tmp/model.tar.gz -C "${MODEL_DIR}"
chmod -R a+rX "${MODEL_DIR}"

registry="${IMAGE_URI%%/*}"
aws ecr get-login-password --region "${REGION}" | docker login --username AWS --password-stdin "${registry}"
docker pull "${IMAGE_URI}"

# The container runs `serve` like on SageMaker; --restart brings it back after a crash or reboot.
# Port 8080 is reachable only as the security group allows (the segment function's, nothing else).
docker rm -f ichseg-endpoint 2>/dev/null || true
docker run -d --name ichseg-endpoint --restart unless-stopped \
    --gpus all -p 8080:8080 \
    -v "${MODEL_DIR}:/opt/ml/model:ro" \
    --log-driver awslogs --log-opt awslogs-region="${REGION}" \
    --log-opt awslogs-group="${LOG_GROUP}" --log-opt awslogs-create-group=true \
    "${IMAGE_URI}" serve

# Ready when /ping says so (model loaded and warmed up on the GPU).
for _ in $(seq 1 120); do
    if curl -fsS http://127.0.0.1:8080/ping; then
        echo; echo "ichseg endpoint: ready"
        exit 0
    fi
    sleep 5
done
echo "ichseg endpoint: /ping never turned 200; see docker logs ichseg-endpoint" >&2
exit 1
