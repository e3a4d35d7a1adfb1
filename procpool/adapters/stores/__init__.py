"""The job stores (SQLite, PostgreSQL, memory) and the one read path to a home's jobs."""
