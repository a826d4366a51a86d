"""The ichseg API client for people and scripts: ``ichseg scans submit|status|list|download|delete|open``.

It speaks only the HTTP API (functions/openapi.*), so it runs anywhere with requests and tqdm, far
from the AWS side; :class:`client.api.ScansClient` is the library under the command line.
"""
