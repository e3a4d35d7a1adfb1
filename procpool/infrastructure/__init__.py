"""The outside world: SQLite, files, logs, configuration, the command line."""
