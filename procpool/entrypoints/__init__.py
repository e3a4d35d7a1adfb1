"""What a user starts: the `procpool` command, the daemon's wiring, the HTTP API."""
