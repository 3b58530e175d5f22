"""Reference kernels: recurrent (being written)."""

__all__ = []
