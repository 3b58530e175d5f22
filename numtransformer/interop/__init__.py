"""Interoperability with PyTorch: weight exchange in both directions.

    from numtransformer.interop import from_torch, to_torch
    ours = from_torch(torch_module)      # same weights, same math, in NumPy
    theirs = to_torch(ours)              # and back (batch_first=True)

``TransformerStack`` is the counterpart of ``torch.nn.Transformer`` (an
encoder stack and a decoder stack over embeddings).  torch is imported only
inside the functions that need it; importing this package does not import it.
See ``numtransformer.interop.torch`` for the exact name/layout map.
"""

from .stack import TransformerStack, TransformerStackCache
from .torch import (ParamMap, from_torch, load_torch_state_dict, parameter_map, to_torch,
                    torch_state_dict)

__all__ = ["from_torch", "to_torch", "TransformerStack", "TransformerStackCache", "ParamMap",
           "parameter_map", "torch_state_dict", "load_torch_state_dict"]
