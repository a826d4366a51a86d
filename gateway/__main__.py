"""``python -m gateway``: the container image's command."""

import sys

from gateway.cli import main

sys.exit(main())
