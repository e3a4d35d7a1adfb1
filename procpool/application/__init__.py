"""The use cases and the processes: the supervisor's loop, dispatch, the worker pool."""
