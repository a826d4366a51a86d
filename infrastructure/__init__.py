"""Deployment helpers and the local stack: the endpoint image, SageMaker deployment, EC2, SAM."""
