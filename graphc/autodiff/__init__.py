"""Reverse-mode differentiation and optimizers, both emitted as IR."""
