"""Running compiled code: a step's buffers and its one native call (step.py), the worker pool (pool.py)."""
