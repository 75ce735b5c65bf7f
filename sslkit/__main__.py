"""``python -m sslkit`` (and ``torchrun -m sslkit``) runs the command line."""

import sys

from sslkit.cli import main

sys.exit(main())
