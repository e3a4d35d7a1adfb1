"""The daemon's JSON log: written, read back and followed."""
