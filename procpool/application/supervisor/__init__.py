"""The supervisor's process: its loop, the fleet it keeps, and what each turn decides and writes."""
