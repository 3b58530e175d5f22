"""Reference kernels: attention (being written)."""

__all__ = []
