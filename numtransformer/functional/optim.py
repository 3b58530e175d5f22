"""Reference kernels: optim (being written)."""

__all__ = []
