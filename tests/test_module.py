"""The layer contract: Parameter, Module tree, state_dict, astype, train/eval."""

import numpy as np
import pytest

from numtransformer import Dropout, LayerNorm, Linear, Module, Parameter
from numtransformer.module import is_outermost_call


class Block(Module):
    def __init__(self):
        self.proj = Linear(4, 4, rng=0)
        self.norm = LayerNorm(4)
        self.drop = Dropout(0.5, rng=0)


class Net(Module):
    def __init__(self, tie=False):
        self.scale = Parameter(np.ones(3, np.float32))
        self.layers = [Block(), Block()]
        self.head = Linear(4, 2, rng=1)
        if tie:
            self.head2 = self.head  # the same module reachable under two names


def test_parameter_holds_data_and_grad_of_same_shape_and_dtype():
    p = Parameter(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert p.grad.shape == p.data.shape and p.grad.dtype == np.float32
    assert not p.grad.any()
    with pytest.raises(TypeError, match="float32 or float64"):
        Parameter(np.arange(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        Parameter(np.ones(3, np.float16))


def test_parameter_copies_its_data():
    a = np.ones(3)
    p = Parameter(a)
    a[0] = 5
    assert p.data[0] == 1


def test_named_parameters_are_dotted_through_children_and_lists():
    names = [n for n, _ in Net().named_parameters()]
    assert names == [
        "scale",
        "layers.0.proj.W", "layers.0.proj.b", "layers.0.norm.gamma", "layers.0.norm.beta",
        "layers.1.proj.W", "layers.1.proj.b", "layers.1.norm.gamma", "layers.1.norm.beta",
        "head.W", "head.b",
    ]


def test_shared_parameters_are_listed_once_but_saved_under_every_name():
    net = Net(tie=True)
    assert len(net.parameters()) == 11
    sd = net.state_dict()
    assert "head2.W" in sd and "head.W" in sd
    net.load_state_dict(sd)  # strict: both names are expected


def test_zero_grad_train_eval():
    net = Net()
    for p in net.parameters():
        p.grad += 1
    net.zero_grad()
    assert all(not p.grad.any() for p in net.parameters())
    net.eval()
    assert all(not m.training for _, m in net.named_modules())
    net.train()
    assert all(m.training for _, m in net.named_modules())


def test_state_dict_round_trip_and_copy_semantics():
    a, b = Net(), Net()
    for p in a.parameters():
        p.data[...] = np.random.default_rng(0).standard_normal(p.shape)
    sd = a.state_dict()
    b.load_state_dict(sd)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and np.array_equal(pa.data, pb.data) and pb.dtype == np.float32
    sd["head.W"][...] = 99  # the state dict is a copy
    assert not (a.head.W.data == 99).any()


def test_load_state_dict_names_every_bad_key():
    net = Net()
    sd = net.state_dict()
    del sd["layers.1.norm.beta"]
    sd["extra.weight"] = np.zeros(2)
    sd["head.W"] = np.zeros((2, 4))
    with pytest.raises(ValueError) as err:
        net.load_state_dict(sd)
    msg = str(err.value)
    assert "layers.1.norm.beta" in msg and "extra.weight" in msg
    assert "head.W" in msg and "(4, 2)" in msg and "(2, 4)" in msg


def test_load_state_dict_non_strict_reports_keys_but_rejects_shapes():
    net = Net()
    sd = net.state_dict()
    del sd["scale"]
    sd["junk"] = np.zeros(1)
    result = net.load_state_dict(sd, strict=False)
    assert result == {"missing_keys": ["scale"], "unexpected_keys": ["junk"]}
    sd["head.b"] = np.zeros(5)
    with pytest.raises(ValueError, match="head.b"):
        net.load_state_dict(sd, strict=False)


def test_load_state_dict_rejects_object_arrays():
    net = Net()
    sd = net.state_dict()
    sd["scale"] = np.array([None, None, None], dtype=object)
    with pytest.raises(ValueError, match="scale"):
        net.load_state_dict(sd)


def test_astype_casts_every_parameter_and_keeps_ties():
    net = Net(tie=True).astype(np.float64)
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in net.parameters())
    assert net.head2.W is net.head.W
    assert net.layers[0].norm.dtype == np.float64
    with pytest.raises(TypeError):
        net.astype(np.int32)


def test_call_runs_forward_and_drops_the_cache():
    lin = Linear(3, 2, rng=0)
    x = np.ones((1, 3), np.float32)
    assert np.array_equal(lin(x), lin.forward(x)[0])


def test_forward_stores_nothing_on_self():
    net = Net()
    before = {id(m): dict(vars(m)) for _, m in net.named_modules()}
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    for block in net.layers:
        block.proj.forward(x)
        block.norm.forward(x)
        block.drop.forward(x)
    for _, m in net.named_modules():
        assert set(vars(m)) == set(before[id(m)])


def test_nesting_depth_marks_the_outermost_call():
    seen = []

    class Inner(Module):
        def forward(self, x):
            seen.append(("inner", is_outermost_call(self)))
            return x, None

    class Outer(Module):
        def __init__(self):
            self.inner = Inner()

        def forward(self, x):
            seen.append(("outer", is_outermost_call(self)))
            return self.inner.forward(x)

    Outer().forward(1.0)
    Inner().forward(1.0)
    assert seen == [("outer", True), ("inner", False), ("inner", True)]


def test_repr_shows_the_tree():
    text = repr(Net())
    assert "(layers.0): Block(" in text and "Linear(in_features=4, out_features=4" in text


def test_tied_names_must_agree_on_load():
    net = Net(tie=True)
    sd = net.state_dict()
    sd["head2.W"] = sd["head2.W"] + 1
    with pytest.raises(ValueError, match="head2.W: tied to head.W but holds a different value"):
        net.load_state_dict(sd)


def test_a_subclass_calling_super_forward_still_checks_for_nan():
    class MyLinear(Linear):
        def forward(self, x):
            return super().forward(x)

    with pytest.raises(ValueError, match="NaN"):
        MyLinear(2, 2, rng=0)(np.full((1, 2), np.nan, np.float32))


# -- frozen parameters (requires_grad=False) ----------------------------------------------


def test_parameter_requires_grad_flag():
    p = Parameter(np.ones(3))
    assert p.requires_grad is True
    q = Parameter(np.ones(3), requires_grad=False)
    assert q.requires_grad is False and q.grad.shape == (3,)
    assert q.requires_grad_(True) is q and q.requires_grad
    assert "requires_grad" not in repr(q) and "requires_grad=False" in repr(
        q.requires_grad_(False))
    with pytest.raises(TypeError, match="Parameter: requires_grad must be a bool, got int"):
        Parameter(np.ones(2), requires_grad=1)
    with pytest.raises(TypeError, match="Parameter.requires_grad_: requires_grad must be a bool"):
        p.requires_grad_("no")
    import copy
    import pickle
    for clone in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert clone.requires_grad is False and np.array_equal(clone.data, q.data)


def test_frozen_parameters_stay_in_the_tree_state_and_casts():
    net = Net(tie=True)
    everything = [n for n, _ in net.named_parameters()]
    total = net.num_parameters()
    assert net.layers[0].requires_grad_(False) is net.layers[0]
    net.head.b.requires_grad_(False)
    frozen = ["layers.0.proj.W", "layers.0.proj.b", "layers.0.norm.gamma",
              "layers.0.norm.beta", "head.b"]
    assert [n for n, _ in net.named_parameters()] == everything  # still parameters
    trainable = [n for n, _ in net.named_parameters(trainable_only=True)]
    assert trainable == [n for n in everything if n not in frozen]
    assert [n for n, _ in net.trainable_parameters()] == trainable
    assert len(net.parameters(trainable_only=True)) == len(trainable)
    assert net.num_parameters() == total
    assert net.num_parameters(trainable_only=True) == total - (16 + 4 + 4 + 4 + 2)
    # state_dict: every name, frozen or not; a strict load round-trips and keeps the flags
    sd = net.state_dict()
    assert list(sd) == list(Net(tie=True).state_dict())
    other = Net(tie=True)
    other.layers[0].requires_grad_(False)
    other.head.b.requires_grad_(False)
    for p in other.parameters():
        p.data[...] = 7.0
    assert other.load_state_dict(sd) == {"missing_keys": [], "unexpected_keys": []}
    for (n, p), (_, q) in zip(net.named_parameters(), other.named_parameters()):
        assert np.array_equal(p.data, q.data) and p.requires_grad == q.requires_grad, n
    with pytest.raises(ValueError, match="missing keys: layers.0.proj.W"):
        other.load_state_dict({k: v for k, v in sd.items() if k != "layers.0.proj.W"})
    # astype casts frozen parameters too and keeps the flag
    net.astype(np.float64)
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert not net.layers[0].proj.W.requires_grad and net.layers[1].proj.W.requires_grad
    # unfreeze the whole tree
    net.requires_grad_()
    assert net.num_parameters(trainable_only=True) == total
    with pytest.raises(TypeError, match="Net.requires_grad_: requires_grad must be a bool"):
        net.requires_grad_(None)


def test_zero_grad_zeroes_frozen_grads_too_and_freezing_keeps_grads():
    net = Net()
    for p in net.parameters():
        p.grad += 1
    net.requires_grad_(False)
    assert all((p.grad == 1).all() for p in net.parameters())  # freezing leaves grads
    net.zero_grad()
    assert all(not p.grad.any() for p in net.parameters())


def test_a_frozen_parameter_survives_a_checkpoint(tmp_path):
    from numtransformer.checkpoint import load_checkpoint, save_checkpoint

    net = Net()
    net.head.requires_grad_(False)
    for i, p in enumerate(net.parameters()):
        p.data[...] = i
    save_checkpoint(str(tmp_path / "net.npz"), net, {"kind": "net"})
    other = Net()
    other.head.requires_grad_(False)
    other.load_state_dict(load_checkpoint(str(tmp_path / "net.npz")).params)
    assert np.array_equal(other.head.W.data, net.head.W.data) and (other.head.W.data == 9).all()
