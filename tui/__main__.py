"""`python -m mlxsft.tui [DATA] [--model M] [--config run.yaml] [--run DIR]` opens the app
(the same as `mlxsft tui`)."""

import sys

from mlxsft.cli import main

sys.exit(main(["tui", *sys.argv[1:]]))
