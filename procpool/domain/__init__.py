"""The pure core of procpool: jobs, their statuses and rules. No I/O, no processes."""
