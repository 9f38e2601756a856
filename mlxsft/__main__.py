"""`python -m mlxsft` runs the command line."""

import sys

from mlxsft.cli import main

sys.exit(main())
