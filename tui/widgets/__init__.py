"""The TUI's widgets: run panel, loss chart and training view, compare chat, data view."""
