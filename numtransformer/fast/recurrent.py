"""Fast kernels: recurrent (being written)."""

__all__ = []
