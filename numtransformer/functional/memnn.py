"""Reference kernels: memnn (being written)."""

__all__ = []
