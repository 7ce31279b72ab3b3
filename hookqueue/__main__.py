"""``python -m hookqueue``: the same as the ``hookqueue`` command."""

import sys

from .core.cli import main

sys.exit(main())
