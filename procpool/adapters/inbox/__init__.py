"""The inbox directory: job files in, rejected files aside, and the safe reading of both."""
