"""Weight exchange with PyTorch: ``from_torch``, ``to_torch`` and the name/layout map.

torch is imported inside the functions that need it, never at import time, so
``import numtransformer`` (and ``import numtransformer.interop``) works without it.

Pairs covered (torch <-> numtransformer):

    nn.Linear                  <-> layers.Linear
    nn.Embedding               <-> layers.Embedding
    nn.LayerNorm               <-> layers.LayerNorm
    nn.MultiheadAttention      <-> attention.MultiHeadAttention (incl. kdim/vdim)
    nn.TransformerEncoderLayer <-> models.TransformerEncoderLayer
    nn.TransformerDecoderLayer <-> models.TransformerDecoderLayer
    nn.TransformerEncoder      <-> models.TransformerEncoder
    nn.TransformerDecoder      <-> models.TransformerDecoder
    nn.Transformer             <-> interop.TransformerStack (embeddings in, vectors out)
    nn.RNNCell / LSTMCell / GRUCell <-> recurrent.RNNCell / LSTMCell / GRUCell
    nn.RNN / LSTM / GRU        <-> recurrent.RNN("rnn" / "lstm" / "gru")
    Hugging Face's LlamaForCausalLM, LlamaDecoderLayer, LlamaAttention, LlamaMLP,
    LlamaRMSNorm <-> the Llama-style TransformerLM and its parts (``interop/llama.py``,
    where their map and refusals are listed)

Layout rules, one line per kind of tensor (ours <- torch):

    Linear          W = weight.T            b = bias
    Embedding       W = weight
    LayerNorm       gamma = weight          beta = bias
    MHA, fused      in_proj.W = in_proj_weight.T              in_proj.b = in_proj_bias
    MHA, kdim/vdim  q_proj.W = q_proj_weight.T (k, v alike)   q_proj.b = in_proj_bias[:E],
                    k_proj.b = in_proj_bias[E:2E], v_proj.b = in_proj_bias[2E:]
    MHA             out_proj.W = out_proj.weight.T            out_proj.b = out_proj.bias
    enc/dec layer   self_attn.* = self_attn.*, cross_attn.* = multihead_attn.*,
                    ffn.linear1.* = linear1.*, ffn.linear2.* = linear2.*, normK.* = normK.*
    stacks          layers.{i}.* = layers.{i}.*, norm.* = norm.*
    nn.Transformer  encoder.* = encoder.*, decoder.* = decoder.*
    cells           W_ih = weight_ih.T, W_hh = weight_hh.T, b_ih = bias_ih, b_hh = bias_hh
    RNN             cells.{l*dirs+d}.W_ih = weight_ih_l{l}[_reverse].T (and so on)

Conventions.  Our modules are batch-first; a torch module's ``batch_first``
flag only changes the layout of its inputs, so weights map whatever it is, and
``to_torch`` always builds ``batch_first=True`` modules.  Hyper-parameters
travel too: dropout probabilities, LayerNorm eps, the activation (relu, exact
gelu, tanh-approximate gelu), norm_first, padding_idx, and the train/eval mode.
``to_torch(TransformerEncoder)`` sets ``enable_nested_tensor=False``: torch's
nested-tensor fast path (eval mode, no grad) returns zeros at padded
positions, where both implementations otherwise compute the same numbers.

``nn.Transformer`` takes embeddings, not token ids, so it maps to
``TransformerStack`` (an encoder stack and a decoder stack, no embeddings or
output layer), not to ``models.Transformer`` (a whole id-to-logits model).
nn.Transformer always has a final LayerNorm on both stacks; a stack without
one maps to nn.Transformer with a ``custom_encoder``/``custom_decoder``.

Not supported, each refused with an error naming it: bias=False in the
Transformer layers, LSTMs and cells (our layers always have biases), LayerNorm
with weight but no bias, MultiheadAttention's add_bias_kv / add_zero_attn,
nn.RNN's relu nonlinearity, LSTM proj_size, Embedding max_norm /
scale_grad_by_freq, activations other than relu/gelu, custom layer classes
that override forward, memory_mask, and dtypes other than float32/float64.
Deliberate behavioural differences (not mapping errors): a query row whose keys
are all masked gives 0 here, NaN in torch; our 3-D attention mask is
(B, Tq, Tk) shared by the heads, torch's is (B*H, Tq, Tk).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import check_float_dtype
from ..attention import MultiHeadAttention
from ..layers import Embedding, LayerNorm, Linear, LoRALinear
from ..models.transformer import (TransformerDecoder, TransformerDecoderLayer,
                                  TransformerEncoder, TransformerEncoderLayer)
from ..module import Module
from ..recurrent import RNN, GRUCell, LSTMCell, RNNCell
from . import llama
from .stack import TransformerStack

__all__ = ["from_torch", "to_torch", "ParamMap", "parameter_map", "torch_state_dict",
           "load_torch_state_dict"]


# -- the name and layout map ------------------------------------------------------------------
class ParamMap(NamedTuple):
    """One of our parameters and where it lives in the torch module.

    ours = torch_tensor[rows] (rows None: the whole tensor), transposed when
    ``transpose`` (our W is (D_in, D_out), torch's weight is (D_out, D_in));
    with ``cols``, ours[..., start:stop] = torch_tensor (transposed when
    ``transpose``).
    """

    ours: str  # our dotted parameter name
    torch: str  # torch's dotted parameter name
    transpose: bool  # ours is the transpose of torch's tensor (or of its rows)
    rows: tuple | None  # (start, stop): ours comes from rows start..stop-1 of torch's tensor
    cols: tuple | None = None  # (start, stop): torch's tensor is ours[..., start:stop]
    #                           (several torch tensors side by side in one of ours, as
    #                           Llama's q/k/v_proj in our fused in_proj)


def _prefixed(maps, ours_prefix: str, torch_prefix: str):
    return [m._replace(ours=ours_prefix + m.ours, torch=torch_prefix + m.torch) for m in maps]


def _linear_map(lin: Linear):
    maps = [ParamMap("W", "weight", True, None)]
    if lin.b is not None:
        maps.append(ParamMap("b", "bias", False, None))
    return maps


def _mha_map(mha: MultiHeadAttention):
    extras = [name for name, on in (("n_kv_heads < n_heads", mha.n_kv_heads != mha.n_heads),
                                    ("rotary", mha.rotary is not None),
                                    ("window", mha.window is not None), ("alibi", mha.alibi))
              if on]
    if extras:
        raise TypeError(f"interop: this MultiHeadAttention uses {', '.join(extras)}; "
                        f"torch.nn.MultiheadAttention has no counterpart")
    E = mha.d_model
    bias = mha.out_proj.b is not None
    if mha.in_proj is not None:
        maps = [ParamMap("in_proj.W", "in_proj_weight", True, None)]
        if bias:
            maps.append(ParamMap("in_proj.b", "in_proj_bias", False, None))
    else:
        maps = []
        for i, name in enumerate("qkv"):
            maps.append(ParamMap(f"{name}_proj.W", f"{name}_proj_weight", True, None))
            if bias:
                maps.append(ParamMap(f"{name}_proj.b", "in_proj_bias", False,
                                     (i * E, (i + 1) * E)))
    return maps + _prefixed(_linear_map(mha.out_proj), "out_proj.", "out_proj.")


def _layer_map(layer):
    maps = _prefixed(_mha_map(layer.self_attn), "self_attn.", "self_attn.")
    norms = ["norm1", "norm2"]
    if isinstance(layer, TransformerDecoderLayer):
        maps += _prefixed(_mha_map(layer.cross_attn), "cross_attn.", "multihead_attn.")
        norms.append("norm3")
    maps += _prefixed(_linear_map(layer.ffn.linear1), "ffn.linear1.", "linear1.")
    maps += _prefixed(_linear_map(layer.ffn.linear2), "ffn.linear2.", "linear2.")
    for norm in norms:
        maps += _prefixed(_norm_map(getattr(layer, norm)), norm + ".", norm + ".")
    return maps


def _norm_map(norm: LayerNorm):
    if not isinstance(norm, LayerNorm):
        raise TypeError(f"interop: a {type(norm).__name__} norm has no counterpart in "
                        f"PyTorch's Transformer layers (they use LayerNorm); build the model "
                        f"with norm='layernorm' to exchange weights")
    if norm.gamma is None:
        return []
    return [ParamMap("gamma", "weight", False, None), ParamMap("beta", "bias", False, None)]


def _stack_map(stack):
    maps = []
    for i, layer in enumerate(stack.layers):
        maps += _prefixed(_layer_map(layer), f"layers.{i}.", f"layers.{i}.")
    if stack.norm is not None:
        maps += _prefixed(_norm_map(stack.norm), "norm.", "norm.")
    return maps


def _cell_map(suffix: str = ""):
    return [ParamMap("W_ih", "weight_ih" + suffix, True, None),
            ParamMap("W_hh", "weight_hh" + suffix, True, None),
            ParamMap("b_ih", "bias_ih" + suffix, False, None),
            ParamMap("b_hh", "bias_hh" + suffix, False, None)]


def _rnn_map(rnn: RNN):
    maps, dirs = [], rnn.num_directions
    for layer in range(rnn.num_layers):
        for d in range(dirs):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            maps += _prefixed(_cell_map(suffix), f"cells.{layer * dirs + d}.", "")
    return maps


def parameter_map(module: Module) -> list[ParamMap]:
    """Where each of ``module``'s parameters lives in the equivalent torch module."""
    for path, child in module.named_modules():
        if isinstance(child, LoRALinear):  # its adapters have no place in the torch module
            raise TypeError(f"interop: {path or type(module).__name__} is a LoRALinear; "
                            f"fold the adapters into the base weights first "
                            f"(numtransformer.layers.remove_lora(model, merge=True))")
    if llama.maps_onto_llama(module):  # Hugging Face's Llama modules (interop/llama.py)
        return llama.parameter_map(module)
    if isinstance(module, TransformerStack):
        return (_prefixed(_stack_map(module.encoder), "encoder.", "encoder.")
                + _prefixed(_stack_map(module.decoder), "decoder.", "decoder."))
    if isinstance(module, (TransformerEncoder, TransformerDecoder)):
        return _stack_map(module)
    if isinstance(module, (TransformerEncoderLayer, TransformerDecoderLayer)):
        return _layer_map(module)
    if isinstance(module, MultiHeadAttention):
        return _mha_map(module)
    if isinstance(module, Linear):
        return _linear_map(module)
    if isinstance(module, Embedding):
        return [ParamMap("W", "weight", False, None)]
    if isinstance(module, LayerNorm):
        return _norm_map(module)
    if isinstance(module, (RNNCell, LSTMCell, GRUCell)):
        return _cell_map()
    if isinstance(module, RNN):
        return _rnn_map(module)
    raise TypeError(f"interop: {type(module).__name__} has no PyTorch counterpart; supported: "
                    f"{', '.join(_OURS_SUPPORTED)}")


_OURS_SUPPORTED = ("Linear", "Embedding", "LayerNorm", "MultiHeadAttention",
                   "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
                   "TransformerDecoder", "TransformerStack", "RNNCell", "LSTMCell", "GRUCell",
                   "RNN", "and, to Hugging Face's Llama: TransformerLM (Llama-style), "
                   "RMSNorm, SwiGLUFeedForward")


def torch_state_dict(module: Module, grad: bool = False) -> dict[str, np.ndarray]:
    """Our parameters (``grad=True``: their gradients) under torch's names, in torch's layout.

    Comparing ``torch_state_dict(ours, grad=True)`` with torch's
    ``{name: p.grad}`` is how the parity tests check every parameter gradient.
    """
    params = dict(module.named_parameters())
    pieces: dict[str, list] = {}
    for m in parameter_map(module):
        p = params[m.ours]
        a = p.grad if grad else p.data
        if m.cols is not None:
            a = a[..., m.cols[0]:m.cols[1]]
        a = a.T if m.transpose else a
        pieces.setdefault(m.torch, []).append((m.rows, a))
    out = {}
    for name, parts in pieces.items():
        if parts[0][0] is None:
            out[name] = np.ascontiguousarray(parts[0][1])
        else:
            out[name] = np.concatenate([a for _, a in sorted(parts, key=lambda r: r[0][0])])
    return out


def load_torch_state_dict(module: Module, state) -> None:
    """Copy torch-named, torch-laid-out arrays (or tensors) into ``module``'s parameters.

    Every torch name the map needs must be present and nothing else; shapes
    must match.  Values are cast to each parameter's dtype.
    """
    who = f"load_torch_state_dict({type(module).__name__})"
    arrays = {k: _to_numpy(v) for k, v in state.items()}
    maps = parameter_map(module)
    needed = {m.torch for m in maps}
    missing = sorted(needed - set(arrays))
    unexpected = sorted(set(arrays) - needed)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing torch parameters: " + ", ".join(missing))
        if unexpected:
            parts.append("torch parameters with no counterpart: " + ", ".join(unexpected))
        raise ValueError(f"{who}: " + "; ".join(parts))
    params = dict(module.named_parameters())
    new = {}
    for m in maps:
        a = arrays[m.torch]
        if m.rows is not None:
            a = a[m.rows[0]:m.rows[1]]
        a = a.T if m.transpose else a
        p = params[m.ours]
        if m.cols is None:
            target, where = p.shape, m.ours
        else:  # one column block of ours
            target = p.data[..., m.cols[0]:m.cols[1]].shape
            where = f"{m.ours}[..., {m.cols[0]}:{m.cols[1]}]"
        if a.shape != target:
            raise ValueError(f"{who}: torch parameter {m.torch} gives {where} shape {a.shape}, "
                             f"expected {target}")
        new.setdefault(m.ours, []).append((m.cols, a))
    for name, pieces in new.items():
        p = params[name]
        if pieces[0][0] is None:
            data = pieces[0][1]
        else:  # the column blocks side by side, in column order
            data = np.concatenate([a for _, a in sorted(pieces, key=lambda c: c[0][0])], axis=-1)
        p.data = np.array(data, dtype=p.dtype, order="C", copy=True)
        if p.grad.shape != p.data.shape:
            p.grad = np.zeros_like(p.data)


def _to_numpy(v) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "detach"):  # a torch tensor
        return v.detach().cpu().numpy()
    return np.asarray(v)


# -- torch -> numtransformer -------------------------------------------------------------------
def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError("numtransformer.interop needs PyTorch: pip install torch "
                          "(or the project's 'torch' extra)") from exc
    return torch


def _np_dtype(torch_module, who: str):
    torch = _torch()
    dtypes = {p.dtype for p in torch_module.parameters()}
    if not dtypes:
        return np.dtype(np.float32)
    if len(dtypes) > 1:
        raise TypeError(f"from_torch: {who} mixes parameter dtypes {sorted(map(str, dtypes))}")
    dt = dtypes.pop()
    table = {torch.float32: np.float32, torch.float64: np.float64}
    if dt not in table:
        raise TypeError(f"from_torch: {who} has dtype {dt}; only float32 and float64 are "
                        f"supported (cast it with .float() or .double())")
    return np.dtype(table[dt])


def _base_class(module, classes, who: str):
    """The supported torch class ``module`` is (or subclasses without changing forward)."""
    for cls in type(module).__mro__:
        if cls in classes:
            if type(module).forward is not cls.forward:
                raise TypeError(f"{who}: {type(module).__name__} subclasses nn.{cls.__name__} "
                                f"but overrides forward, so its math may differ; not supported")
            return cls
    return None


def _activation_name(act, who: str) -> str:
    torch = _torch()
    F = torch.nn.functional
    if act is F.relu or isinstance(act, torch.nn.ReLU):
        return "relu"
    if act is F.gelu:
        return "gelu"
    if isinstance(act, torch.nn.GELU):
        return {"none": "gelu", "tanh": "gelu_tanh"}[act.approximate]
    name = getattr(act, "__name__", type(act).__name__)
    raise ValueError(f"from_torch: {who} has activation {name}; supported: relu, gelu, "
                     f"GELU(approximate='tanh')")


def _check_mha(t, who: str) -> None:
    if t.bias_k is not None:
        raise ValueError(f"from_torch: {who} uses add_bias_kv=True; not supported")
    if t.add_zero_attn:
        raise ValueError(f"from_torch: {who} uses add_zero_attn=True; not supported")
    if (t.in_proj_bias is None) != (t.out_proj.bias is None):
        raise ValueError(f"from_torch: {who} has a bias on only one of its projections; "
                         f"not supported")


def _mha_from_torch(t, who, dtype):
    _check_mha(t, who)
    kdim, vdim = t.kdim, t.vdim
    return MultiHeadAttention(t.embed_dim, t.num_heads, dropout=float(t.dropout),
                              bias=t.in_proj_bias is not None, kdim=kdim, vdim=vdim,
                              dtype=dtype)


def _check_biases(t, who, names):
    for name in names:
        sub = t.get_submodule(name)
        if getattr(sub, "bias", None) is None:
            raise ValueError(f"from_torch: {who}.{name} has no bias (bias=False); our "
                             f"Transformer layers always have biases: not supported")


def _layer_from_torch(t, who, dtype, decoder: bool):
    names = ["linear1", "linear2", "norm1", "norm2"] + (["norm3"] if decoder else [])
    _check_biases(t, who, names)
    if t.self_attn.in_proj_bias is None:
        raise ValueError(f"from_torch: {who}.self_attn has bias=False; not supported")
    act = _activation_name(t.activation, who)
    cls = TransformerDecoderLayer if decoder else TransformerEncoderLayer
    ours = cls(t.self_attn.embed_dim, t.self_attn.num_heads, t.linear1.out_features,
               dropout=t.dropout.p, activation=act, layer_norm_eps=t.norm1.eps,
               norm_first=t.norm_first, dtype=dtype)
    ours.self_attn = _mha_from_torch(t.self_attn, who + ".self_attn", dtype)
    if decoder:
        ours.cross_attn = _mha_from_torch(t.multihead_attn, who + ".multihead_attn", dtype)
    if ours.self_attn.in_proj is None:
        raise ValueError(f"from_torch: {who}.self_attn has kdim/vdim != d_model")
    ours.ffn.dropout.p = float(t.dropout.p)
    for k in range(1, 4 if decoder else 3):
        getattr(ours, f"dropout{k}").p = float(getattr(t, f"dropout{k}").p)
        norm, tnorm = getattr(ours, f"norm{k}"), getattr(t, f"norm{k}")
        if tuple(tnorm.normalized_shape) != (ours.d_model,):
            raise ValueError(f"from_torch: {who}.norm{k} has normalized_shape "
                             f"{tuple(tnorm.normalized_shape)}, expected ({ours.d_model},)")
        norm.eps = float(tnorm.eps)
    return ours


def _stack_from_torch(t, who, dtype, decoder: bool):
    torch = _torch()
    layer_cls = torch.nn.TransformerDecoderLayer if decoder else torch.nn.TransformerEncoderLayer
    layers = []
    for i, tl in enumerate(t.layers):
        if _base_class(tl, (layer_cls,), f"from_torch: {who}.layers.{i}") is None:
            raise TypeError(f"from_torch: {who}.layers.{i} is a {type(tl).__name__}, expected "
                            f"nn.{layer_cls.__name__}")
        layers.append(_layer_from_torch(tl, f"{who}.layers.{i}", dtype, decoder))
    first = layers[0]
    cls = TransformerDecoder if decoder else TransformerEncoder
    ours = cls(1, first.d_model, first.nhead, first.ffn.d_ff, dropout=first.dropout1.p,
               activation=first.ffn.activation, norm_first=first.norm_first,
               final_norm=t.norm is not None, dtype=dtype)
    for i, layer in enumerate(layers):
        if layer.d_model != first.d_model:
            raise ValueError(f"from_torch: {who}.layers.{i} has d_model={layer.d_model}, "
                             f"layer 0 has {first.d_model}")
    ours.layers = layers
    if t.norm is not None:
        if _base_class(t.norm, (torch.nn.LayerNorm,), f"from_torch: {who}.norm") is None:
            raise TypeError(f"from_torch: {who}.norm is a {type(t.norm).__name__}; only "
                            f"nn.LayerNorm (or None) is supported")
        ours.norm = _layernorm_from_torch(t.norm, who + ".norm", dtype)
        if ours.norm.normalized_shape != (first.d_model,) or ours.norm.gamma is None:
            raise ValueError(f"from_torch: {who}.norm must be LayerNorm({first.d_model}) "
                             f"with weight and bias")
    return ours


def _layernorm_from_torch(t, who, dtype):
    if t.weight is not None and t.bias is None:
        raise ValueError(f"from_torch: {who} has a weight but no bias (bias=False); not "
                         f"supported")
    return LayerNorm(tuple(t.normalized_shape), eps=t.eps,
                     elementwise_affine=t.weight is not None, dtype=dtype)


def _rnn_from_torch(t, who, dtype):
    modes = {"RNN_TANH": "rnn", "LSTM": "lstm", "GRU": "gru"}
    if t.mode == "RNN_RELU":
        raise ValueError(f"from_torch: {who} uses nonlinearity='relu'; only tanh is supported")
    if t.mode not in modes:
        raise ValueError(f"from_torch: {who} has mode {t.mode!r}; not supported")
    if not t.bias:
        raise ValueError(f"from_torch: {who} has bias=False; not supported")
    if getattr(t, "proj_size", 0):
        raise ValueError(f"from_torch: {who} uses proj_size={t.proj_size}; not supported")
    return RNN(modes[t.mode], t.input_size, t.hidden_size, num_layers=t.num_layers,
               bidirectional=bool(t.bidirectional), dropout=float(t.dropout), dtype=dtype)


def _cell_from_torch(t, who, dtype, cls):
    if t.bias_ih is None:
        raise ValueError(f"from_torch: {who} has bias=False; not supported")
    if getattr(t, "nonlinearity", "tanh") != "tanh":
        raise ValueError(f"from_torch: {who} uses nonlinearity={t.nonlinearity!r}; only tanh "
                         f"is supported")
    return cls(t.input_size, t.hidden_size, dtype=dtype)


def _build_from_torch(t, who: str, dtype) -> Module:
    torch = _torch()
    nn = torch.nn
    if llama.is_hf_llama(t):
        return llama.from_hf(t, who, dtype)
    table = (nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
             nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention,
             nn.Linear, nn.Embedding, nn.LayerNorm, nn.RNNCell, nn.LSTMCell, nn.GRUCell,
             nn.RNN, nn.LSTM, nn.GRU)
    base = _base_class(t, table, f"from_torch: {who}")
    if base is None:
        raise TypeError(f"from_torch: {who} is a {type(t).__name__}, which has no "
                        f"numtransformer counterpart; supported: "
                        + ", ".join("nn." + c.__name__ for c in table))
    if base is nn.Linear:
        return Linear(t.in_features, t.out_features, bias=t.bias is not None, dtype=dtype)
    if base is nn.Embedding:
        if t.max_norm is not None:
            raise ValueError(f"from_torch: {who} uses max_norm={t.max_norm}; not supported")
        if t.scale_grad_by_freq:
            raise ValueError(f"from_torch: {who} uses scale_grad_by_freq=True; not supported")
        return Embedding(t.num_embeddings, t.embedding_dim, padding_idx=t.padding_idx,
                         dtype=dtype)
    if base is nn.LayerNorm:
        return _layernorm_from_torch(t, who, dtype)
    if base is nn.MultiheadAttention:
        return _mha_from_torch(t, who, dtype)
    if base is nn.TransformerEncoderLayer:
        return _layer_from_torch(t, who, dtype, decoder=False)
    if base is nn.TransformerDecoderLayer:
        return _layer_from_torch(t, who, dtype, decoder=True)
    if base is nn.TransformerEncoder:
        return _stack_from_torch(t, who, dtype, decoder=False)
    if base is nn.TransformerDecoder:
        return _stack_from_torch(t, who, dtype, decoder=True)
    if base is nn.Transformer:
        parts = []
        for name, cls in (("encoder", nn.TransformerEncoder), ("decoder", nn.TransformerDecoder)):
            sub = getattr(t, name)
            if _base_class(sub, (cls,), f"from_torch: {who}.{name}") is None:
                raise TypeError(f"from_torch: {who}.{name} is a {type(sub).__name__} (a custom "
                                f"{name}); only nn.{cls.__name__} is supported")
            parts.append(_stack_from_torch(sub, f"{who}.{name}", dtype, name == "decoder"))
        return TransformerStack.from_stacks(*parts)
    if base in (nn.RNN, nn.LSTM, nn.GRU):
        return _rnn_from_torch(t, who, dtype)
    cells = {nn.RNNCell: RNNCell, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell}
    return _cell_from_torch(t, who, dtype, cells[base])


def from_torch(module, dtype=None) -> Module:
    """The numtransformer module equivalent to the torch ``module``, holding the same weights.

    The result computes in ``dtype`` (float32 or float64); by default in the
    torch module's own dtype (float32 for a module without parameters, such
    as LayerNorm(elementwise_affine=False)).  It takes the module's train/eval
    mode.  An unsupported module or option raises a TypeError/ValueError
    naming it (see the module docstring for the list).
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    who = type(module).__name__
    own = _np_dtype(module, who)
    dtype = own if dtype is None else check_float_dtype("from_torch", dtype)
    ours = _build_from_torch(module, who, dtype)
    load_torch_state_dict(ours, dict(module.named_parameters()))
    ours.train(module.training)
    return ours


# -- numtransformer -> torch -------------------------------------------------------------------
def _torch_dtype(module: Module):
    torch = _torch()
    dtypes = {p.dtype for p in module.parameters()}
    if not dtypes:  # LayerNorm without gamma/beta: the dtype it computes in
        dtypes = {np.dtype(getattr(module, "dtype", np.float32))}
    if len(dtypes) != 1:
        raise TypeError(f"to_torch: {type(module).__name__} has parameter dtypes "
                        f"{sorted(map(str, dtypes))}; expected one")
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtypes.pop()]


def _torch_activation(name: str):
    torch = _torch()
    if name == "gelu_tanh":
        return torch.nn.GELU(approximate="tanh")
    return name  # "relu" or "gelu"


def _mha_to_torch(m: MultiHeadAttention, dtype):
    torch = _torch()
    return torch.nn.MultiheadAttention(m.d_model, m.n_heads, dropout=m.dropout.p,
                                       bias=m.out_proj.b is not None, kdim=m.kdim, vdim=m.vdim,
                                       batch_first=True, dtype=dtype)


def _layer_to_torch(layer, dtype):
    torch = _torch()
    decoder = isinstance(layer, TransformerDecoderLayer)
    cls = torch.nn.TransformerDecoderLayer if decoder else torch.nn.TransformerEncoderLayer
    t = cls(layer.d_model, layer.nhead, dim_feedforward=layer.ffn.d_ff,
            dropout=layer.dropout1.p, activation=_torch_activation(layer.ffn.activation),
            layer_norm_eps=layer.norm1.eps, batch_first=True, norm_first=layer.norm_first,
            dtype=dtype)
    if layer.self_attn.in_proj is None or (decoder and layer.cross_attn.kdim != layer.d_model):
        raise ValueError("to_torch: a Transformer layer whose attention has kdim/vdim != d_model "
                         "has no torch counterpart")
    for ours_name, t_name in (("self_attn", "self_attn"), ("cross_attn", "multihead_attn")):
        if decoder or ours_name == "self_attn":
            mha = getattr(layer, ours_name)
            if mha.out_proj.b is None:
                raise ValueError(f"to_torch: {ours_name} has no bias; torch's Transformer layers "
                                 f"always have one")
            getattr(t, t_name).dropout = mha.dropout.p
    t.dropout.p = layer.ffn.dropout.p
    for k in range(1, 4 if decoder else 3):
        getattr(t, f"dropout{k}").p = getattr(layer, f"dropout{k}").p
        getattr(t, f"norm{k}").eps = getattr(layer, f"norm{k}").eps
    return t


def _stack_to_torch(stack, dtype):
    torch = _torch()
    decoder = isinstance(stack, TransformerDecoder)
    norm = None
    if stack.norm is not None:
        norm = torch.nn.LayerNorm(stack.d_model, eps=stack.norm.eps, dtype=dtype)
    layers = [_layer_to_torch(layer, dtype) for layer in stack.layers]
    if decoder:
        t = torch.nn.TransformerDecoder(layers[0], len(layers), norm=norm)
    else:
        t = torch.nn.TransformerEncoder(layers[0], len(layers), norm=norm,
                                        enable_nested_tensor=False)
    t.layers = torch.nn.ModuleList(layers)
    return t


def _build_to_torch(m: Module, dtype):
    torch = _torch()
    nn = torch.nn
    if llama.maps_onto_llama(m):
        return llama.to_hf(m, dtype)
    if isinstance(m, TransformerStack):
        enc, dec = m.encoder, m.decoder
        first = enc.layers[0]
        if enc.norm is not None and dec.norm is not None:
            t = nn.Transformer(m.d_model, m.nhead, len(enc.layers), len(dec.layers),
                               dim_feedforward=first.ffn.d_ff, dropout=first.dropout1.p,
                               activation=_torch_activation(first.ffn.activation),
                               layer_norm_eps=first.norm1.eps, batch_first=True,
                               norm_first=first.norm_first, dtype=dtype)
            t.encoder = _stack_to_torch(enc, dtype)
            t.decoder = _stack_to_torch(dec, dtype)
            return t
        return nn.Transformer(m.d_model, m.nhead, custom_encoder=_stack_to_torch(enc, dtype),
                              custom_decoder=_stack_to_torch(dec, dtype), batch_first=True,
                              dtype=dtype)
    if isinstance(m, (TransformerEncoder, TransformerDecoder)):
        return _stack_to_torch(m, dtype)
    if isinstance(m, (TransformerEncoderLayer, TransformerDecoderLayer)):
        return _layer_to_torch(m, dtype)
    if isinstance(m, MultiHeadAttention):
        return _mha_to_torch(m, dtype)
    if isinstance(m, Linear):
        return nn.Linear(m.in_features, m.out_features, bias=m.b is not None, dtype=dtype)
    if isinstance(m, Embedding):
        return nn.Embedding(m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx,
                            dtype=dtype)
    if isinstance(m, LayerNorm):
        return nn.LayerNorm(m.normalized_shape, eps=m.eps,
                            elementwise_affine=m.gamma is not None, dtype=dtype)
    if isinstance(m, RNN):
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[m.cell_type]
        return cls(m.input_size, m.hidden_size, num_layers=m.num_layers, batch_first=True,
                   dropout=m.dropout.p, bidirectional=m.bidirectional, dtype=dtype)
    cells = {RNNCell: nn.RNNCell, LSTMCell: nn.LSTMCell, GRUCell: nn.GRUCell}
    for ours_cls, torch_cls in cells.items():
        if isinstance(m, ours_cls):
            return torch_cls(m.input_size, m.hidden_size, dtype=dtype)
    raise TypeError(f"to_torch: {type(m).__name__} has no PyTorch counterpart; supported: "
                    f"{', '.join(_OURS_SUPPORTED)}")


def to_torch(module: Module):
    """The torch module equivalent to ``module``, holding the same weights (batch_first=True).

    The result has our parameters' dtype and our train/eval mode.
    """
    torch = _torch()
    if not isinstance(module, Module):
        raise TypeError(f"to_torch: expected a numtransformer Module, got "
                        f"{type(module).__name__}")
    parameter_map(module)  # an unsupported module fails here, with the supported list
    dtype = _torch_dtype(module)
    t = _build_to_torch(module, dtype)
    state = {k: torch.from_numpy(np.array(v, order="C", copy=True))
             for k, v in torch_state_dict(module).items()}
    missing, unexpected = t.load_state_dict(state, strict=False)
    missing = sorted(set(missing) - llama.state_aliases(t))  # a tied lm_head is embed_tokens
    if missing or unexpected:  # pragma: no cover - a bug in the map, not a user error
        raise RuntimeError(f"to_torch: internal map mismatch: missing {missing}, "
                           f"unexpected {unexpected}")
    t.train(module.training)
    return t
