#!/usr/bin/env bash
# Launch one GPU EC2 instance running the ichseg endpoint image (the SageMaker alternative).
#
#   IMAGE_URI=123456789012.dkr.ecr.eu-west-1.amazonaws.com/ichseg-endpoint:1.0.0 \
#   MODEL_DATA=s3://my-bucket/models/ichseg/model.tar.gz \
#   AMI_ID=ami-... SUBNET_ID=subnet-... SECURITY_GROUP_ID=sg-... INSTANCE_PROFILE=ichseg-endpoint \
#   [REGION=eu-west-1] [INSTANCE_TYPE=g5.xlarge] [LOG_GROUP=/ichseg/endpoint] [DRY_RUN=1] \
#   infrastructure/ec2/launch.sh
#
# Prints the instance id and private address; point the segment function at it with
# ICHSEG_ENDPOINT_URL=http://<private-ip>:8080 (see README.md beside this script).
# DRY_RUN=1 prints the user data and the aws command instead of launching.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${IMAGE_URI:?set IMAGE_URI (the endpoint image in ECR)}"
: "${MODEL_DATA:?set MODEL_DATA (s3://.../model.tar.gz)}"
: "${AMI_ID:?set AMI_ID (a GPU AMI with NVIDIA driver >= 580, Docker and the NVIDIA Container Toolkit)}"
: "${SUBNET_ID:?set SUBNET_ID (a private subnet the segment function can reach)}"
: "${SECURITY_GROUP_ID:?set SECURITY_GROUP_ID (port 8080 from the segment function only)}"
: "${INSTANCE_PROFILE:?set INSTANCE_PROFILE (S3 read of the model, ECR pull, CloudWatch Logs)}"
REGION="${REGION:-${AWS_REGION:-${AWS_DEFAULT_REGION:-}}}"
: "${REGION:?set REGION}"
INSTANCE_TYPE="${INSTANCE_TYPE:-g5.xlarge}"
LOG_GROUP="${LOG_GROUP:-/ichseg/endpoint}"
ROOT_DEVICE="${ROOT_DEVICE:-/dev/sda1}"  # Ubuntu AMIs; Amazon Linux uses /dev/xvda

case "${MODEL_DATA}" in s3://*.tar.gz) ;; *) echo "MODEL_DATA must be s3://.../model.tar.gz" >&2; exit 2 ;; esac

user_data="$(mktemp)"
trap 'rm -f "${user_data}"' EXIT
sed -e "s|@IMAGE_URI@|${IMAGE_URI}|" -e "s|@MODEL_DATA@|${MODEL_DATA}|" \
    -e "s|@REGION@|${REGION}|" -e "s|@LOG_GROUP@|${LOG_GROUP}|" \
    "${here}/user-data.sh" > "${user_data}"

command=(aws ec2 run-instances --region "${REGION}"
    --image-id "${AMI_ID}" --instance-type "${INSTANCE_TYPE}" --count 1
    --subnet-id "${SUBNET_ID}" --security-group-ids "${SECURITY_GROUP_ID}"
    --iam-instance-profile "Name=${INSTANCE_PROFILE}"
    --metadata-options "HttpTokens=required,HttpEndpoint=enabled"
    --block-device-mappings "[{\"DeviceName\":\"${ROOT_DEVICE}\",\"Ebs\":{\"VolumeSize\":100,\"VolumeType\":\"gp3\",\"Encrypted\":true}}]"
    --tag-specifications "ResourceType=instance,Tags=[{Key=Name,Value=ichseg-endpoint},{Key=project,Value=ichseg}]"
    --user-data "file://${user_data}"
    --query "Instances[0].[InstanceId,PrivateIpAddress]" --output text)

if [ "${DRY_RUN:-0}" = "1" ]; then
    cat "${user_data}"
    printf '%q ' "${command[@]}"; echo
    exit 0
fi

read -r instance_id private_ip < <("${command[@]}")
echo "instance ${instance_id} at ${private_ip}; ready once its user data log says so:"
echo "  aws ec2 get-console-output --region ${REGION} --instance-id ${instance_id}"
echo "segment function: ICHSEG_ENDPOINT_URL=http://${private_ip}:8080"
