"""The runtime: compiled modules, data, training."""
