"""The use cases, by process: the supervisor's (supervisor/), the forked worker's
(worker/) and the wire between them (wire/); ports.py, events.py, handlers.py and
fence.py are shared by both processes."""
