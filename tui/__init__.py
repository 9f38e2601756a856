"""The Textual app for mlxsft (installed as `mlxsft.tui`). The library never imports it."""
