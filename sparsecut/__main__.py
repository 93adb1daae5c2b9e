"""`python -m sparsecut` runs the CLI."""

import sys

from sparsecut.cli import main

sys.exit(main())
