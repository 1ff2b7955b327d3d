"""The runtime, in two layers: `execute` runs compiled steps (buffers, the worker pool, the batch
feed), below the driver; `train` is the training application built on the driver (data sets, the
trainer, checkpoints, gradient checks, profiles, plots)."""
