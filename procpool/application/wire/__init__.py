"""The wire: typed messages between supervisor and workers, and between clients and the daemon."""
