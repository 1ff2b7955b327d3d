"""The training application on top of the driver: data sets, the trainer, checkpoints, gradient
checks, profiles and plots."""
