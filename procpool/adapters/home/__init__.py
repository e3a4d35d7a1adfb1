"""The daemon's own files in its home: pid file, start register, socket door."""
