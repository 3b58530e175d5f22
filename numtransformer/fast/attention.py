"""Fast kernels: attention (being written)."""

__all__ = []
