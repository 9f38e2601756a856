"""`python -m mlxsft.tui` opens the app."""

from mlxsft.tui.app import create_app

create_app().run()
