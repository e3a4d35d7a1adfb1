"""The outside world as the application sees it: stores, the inbox, logs,
configuration, the home's files."""
