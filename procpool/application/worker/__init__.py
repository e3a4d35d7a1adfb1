"""The worker processes: forked by the supervisor (pool.py), and the child's side (main.py)."""
