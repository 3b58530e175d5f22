import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numtransformer import gradcheck
from numtransformer.data.babi import encode_babi, make_babi
from numtransformer.models.memnn import MemN2N, position_encoding
from tests.helpers import check_dtype_preserved, seeds

F64 = np.float64


def make_story(rng, B, N, J, V, Jq=None, empty_row=True):
    """Random right-padded sentences, some padding slots, one story with no sentence."""
    story = rng.integers(1, V, (B, N, J))
    lengths = rng.integers(1, J + 1, (B, N))
    story[np.arange(J)[None, None, :] >= lengths[..., None]] = 0
    n_real = rng.integers(1, N + 1, B)
    story[np.arange(N)[None, :] >= n_real[:, None]] = 0
    if empty_row and B > 1:
        story[rng.integers(B)] = 0
    Jq = J if Jq is None else Jq
    query = rng.integers(1, V, (B, Jq))
    q_len = rng.integers(1, Jq + 1, B)
    query[np.arange(Jq)[None, :] >= q_len[:, None]] = 0
    return story, query


def reference(model, story, query, mask=None, time=None, linear_start=False):
    """The paper's equations, one example, one sentence and one word at a time."""
    K, d = model.hops, model.d
    P = {name: p.data.astype(F64) for name, p in model.named_parameters()}
    if model.tying == "adjacent":
        A = [P["A1"]] + [P[f"C{k}"] for k in range(1, K)]
        C = [P[f"C{k}"] for k in range(1, K + 1)]
        TA = [P["TA1"]] + [P[f"TC{k}"] for k in range(1, K)] if model.temporal else None
        TC = [P[f"TC{k}"] for k in range(1, K + 1)] if model.temporal else None
        Bq, W = P["A1"], P[f"C{K}"].T
    else:
        A, C, Bq, W = [P["A"]] * K, [P["C"]] * K, P["B"], P["W"]
        TA = [P["TA"]] * K if model.temporal else None
        TC = [P["TC"]] * K if model.temporal else None

    def encode(words, E):
        Ji = max((j + 1 for j, w in enumerate(words) if w != 0), default=0)
        out = np.zeros(d)
        for j in range(1, Ji + 1):  # the paper's 1-based j and k
            if words[j - 1] == 0:
                continue
            lj = np.array([(1 - j / Ji) - (k / d) * (1 - 2 * j / Ji) for k in range(1, d + 1)])
            out += (lj if model.position_encoding else 1.0) * E[words[j - 1]]
        return out

    logits, attn = [], []
    for b in range(story.shape[0]):
        slots = [i for i in range(story.shape[1])
                 if not (mask[b, i] if mask is not None else (story[b, i] == 0).all())]
        u = encode(query[b], Bq)
        hops = []
        for k in range(K):
            m, c = {}, {}
            for r, i in enumerate(slots):
                t = len(slots) - 1 - r if time is None else time[b, i]  # 0 = most recent
                m[i] = encode(story[b, i], A[k]) + (TA[k][t] if TA else 0)
                c[i] = encode(story[b, i], C[k]) + (TC[k][t] if TC else 0)
            s = {i: m[i] @ u for i in slots}
            if linear_start:
                p = s
            else:
                z = sum(np.exp(v) for v in s.values())
                p = {i: np.exp(v) / z for i, v in s.items()}
            o = sum((p[i] * c[i] for i in slots), np.zeros(d))
            u = (u @ P["H"] if model.use_H else u) + o
            hops.append([p.get(i, 0.0) for i in range(story.shape[1])])
        logits.append(u @ W)
        attn.append(hops)
    return np.array(logits), np.array(attn)


# --------------------------------------------------------------------------- the math
def test_position_encoding_by_hand():
    l1 = position_encoding(np.array(1), 3, 4)
    np.testing.assert_allclose(l1[0], [0.25, 0.5, 0.75, 1.0])  # J = 1: l_k1 = k/d
    assert np.all(l1[1:] == 0)
    l2 = position_encoding(np.array(2), 2, 2)  # j = 1: 1/2 for every k; j = 2: k/2
    np.testing.assert_allclose(l2, [[0.5, 0.5], [0.5, 1.0]])
    assert position_encoding(np.array([[0, 3]]), 3, 2).shape == (1, 2, 3, 2)
    assert np.all(position_encoding(np.array(0), 3, 2) == 0)


@pytest.mark.parametrize("tying,use_H", [("adjacent", False), ("adjacent", True),
                                         ("layerwise", True), ("layerwise", False)])
@pytest.mark.parametrize("hops", [1, 3])
@pytest.mark.parametrize("linear_start", [False, True])
def test_forward_matches_the_papers_equations(tying, use_H, hops, linear_start):
    r = np.random.default_rng(hops)
    model = MemN2N(11, 6, hops, memory_size=7, tying=tying, use_H=use_H, init_std=0.4,
                   dtype=F64, rng=r)
    story, query = make_story(r, 3, 5, 4, 11, Jq=3)
    logits, cache = model.forward(story, query, linear_start=linear_start)
    ref_logits, ref_p = reference(model, story, query, linear_start=linear_start)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.p, ref_p, rtol=1e-12, atol=1e-12)


def test_forward_matches_reference_without_pe_or_temporal_and_with_explicit_time():
    r = np.random.default_rng(5)
    model = MemN2N(9, 4, 2, memory_size=6, position_encoding=False, temporal=True,
                   init_std=0.5, dtype=F64, rng=r)
    story, query = make_story(r, 2, 4, 3, 9, empty_row=False)
    mask = (story == 0).all(-1)
    time = r.integers(0, 6, (2, 4))
    logits, _ = model.forward(story, query, mask, time)
    np.testing.assert_allclose(logits, reference(model, story, query, mask, time)[0], atol=1e-12)
    plain = MemN2N(9, 4, 2, memory_size=3, temporal=False, dtype=F64, rng=r)
    story, query = make_story(r, 2, 5, 3, 9)  # N = 5 > memory_size: fine without T
    np.testing.assert_allclose(plain(story, query), reference(plain, story, query)[0],
                               atol=1e-12)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("tying", ["adjacent", "layerwise"])
@pytest.mark.parametrize("hops", [1, 3])
@settings(max_examples=8)
@given(data=st.data(), seed=seeds)
def test_gradcheck_whole_model(tying, hops, data, seed):
    B = data.draw(st.integers(1, 3), "B")
    N = data.draw(st.integers(1, 4), "N")
    J = data.draw(st.integers(1, 4), "J")
    d = data.draw(st.integers(1, 5), "d")
    V = data.draw(st.integers(3, 8), "V")
    use_H = data.draw(st.sampled_from([None, True, False]), "use_H")
    linear_start = data.draw(st.booleans(), "linear_start")
    pe = data.draw(st.booleans(), "position_encoding")
    r = np.random.default_rng(seed)
    model = MemN2N(V, d, hops, memory_size=N + 1, tying=tying, use_H=use_H,
                   position_encoding=pe, init_std=0.6, dtype=F64, rng=r)
    story, query = make_story(r, B, N, J, V)
    gradcheck(model, story, query, linear_start=linear_start, seed=seed).assert_passed()


@pytest.mark.parametrize("tying", ["adjacent", "layerwise"])
@pytest.mark.parametrize("hops", [1, 3])
def test_gradcheck_padded_memories_and_an_empty_story(tying, hops):
    r = np.random.default_rng(7)
    model = MemN2N(9, 5, hops, memory_size=6, tying=tying, init_std=0.5, dtype=F64, rng=r)
    story, query = make_story(r, 3, 4, 5, 9, Jq=3, empty_row=False)
    story[1] = 0  # no sentence at all
    story[2, 2:] = 0  # two padding slots
    report = gradcheck(model, story, query)
    report.assert_passed()
    assert report.max_error < 1e-9
    _, cache = model.forward(story, query)
    assert np.all(cache.p[1] == 0) and np.all(cache.p[2, :, 2:] == 0)
    np.testing.assert_allclose(cache.p[[0, 2]].sum(-1), 1.0)


def test_tied_parameters_are_listed_once_and_shared():
    m = MemN2N(10, 4, 3, memory_size=5, tying="adjacent", rng=0)
    assert [n for n, _ in m.named_parameters()] == ["A1", "C1", "C2", "C3", "TA1", "TC1",
                                                     "TC2", "TC3"]
    # hop k+1 reads its keys from hop k's value table: the same object, one gradient
    assert m._tables[1][0] is m.C1 and m._hop_in[1] == m._hop_out[0] == 1
    assert m._B is m.A1
    lw = MemN2N(10, 4, 3, memory_size=5, tying="layerwise", rng=0)
    assert [n for n, _ in lw.named_parameters()] == ["A", "C", "B", "TA", "TC", "H", "W"]
    assert lw._hop_in == [0, 0, 0] and lw._hop_out == [1, 1, 1]
    assert [n for n, _ in MemN2N(10, 4, 2, tying="adjacent", use_H=True, temporal=False,
                                 rng=0).named_parameters()] == ["A1", "C1", "C2", "H"]


def test_tied_gradient_is_the_sum_over_uses():
    """A1 is both B (the question) and A^1 (hop 1's keys): untie the question's copy
    and the tied gradient must equal the sum of the two untied ones."""
    from numtransformer.module import Parameter

    r = np.random.default_rng(3)
    m = MemN2N(8, 4, 2, memory_size=5, init_std=0.5, dtype=F64, rng=r)
    story, query = make_story(r, 2, 3, 3, 8, empty_row=False)
    da = r.standard_normal((2, 8))
    a, cache = m.forward(story, query)
    m.backward(da, cache)
    tied = m.A1.grad.copy()
    m.zero_grad()
    m.B = Parameter(m.A1.data)  # the question now reads its own copy
    m._question_table = "B"
    assert m._B is m.B
    a2, cache = m.forward(story, query)
    m.backward(da, cache)
    np.testing.assert_array_equal(a2, a)
    assert np.abs(m.B.grad).max() > 0 and np.abs(m.A1.grad).max() > 0
    np.testing.assert_allclose(m.A1.grad + m.B.grad, tied, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- properties
@given(seed=seeds, N=st.integers(2, 5), hops=st.sampled_from([1, 3]),
       tying=st.sampled_from(["adjacent", "layerwise"]))
def test_memory_is_a_set_ordered_only_by_its_temporal_codes(seed, N, hops, tying):
    r = np.random.default_rng(seed)
    model = MemN2N(9, 4, hops, memory_size=N, tying=tying, init_std=0.5, dtype=F64, rng=r)
    story, query = make_story(r, 2, N, 3, 9, empty_row=False)
    mask = (story == 0).all(-1)
    time = np.stack([r.permutation(N) for _ in range(2)])
    logits, cache = model.forward(story, query, mask, time)
    perm = r.permutation(N)
    logits2, cache2 = model.forward(story[:, perm], query, mask[:, perm], time[:, perm])
    np.testing.assert_allclose(logits2, logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache2.p, cache.p[:, :, perm], rtol=1e-12, atol=1e-12)


@given(seed=seeds, extra_words=st.integers(0, 3), extra_slots=st.integers(0, 3))
def test_extra_padding_changes_nothing(seed, extra_words, extra_slots):
    r = np.random.default_rng(seed)
    model = MemN2N(9, 5, 3, memory_size=10, init_std=0.5, dtype=F64, rng=r)
    story, query = make_story(r, 3, 4, 3, 9)
    logits, cache = model.forward(story, query)
    wide = np.pad(story, ((0, 0), (0, extra_slots), (0, extra_words)))
    logits2, cache2 = model.forward(wide, np.pad(query, ((0, 0), (0, extra_words))))
    np.testing.assert_allclose(logits2, logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache2.p[:, :, :4], cache.p, rtol=1e-12, atol=1e-12)
    assert np.all(cache2.p[:, :, 4:] == 0)


def test_empty_story_gives_zero_attention_and_finite_gradients():
    for linear_start in (False, True):
        model = MemN2N(6, 3, 3, memory_size=4, dtype=F64, rng=1)
        story = np.zeros((2, 3, 2), dtype=np.int64)
        query = np.array([[1, 2], [3, 0]])
        logits, cache = model.forward(story, query, linear_start=linear_start)
        assert np.all(cache.p == 0) and np.all(np.isfinite(logits))
        model.backward(np.random.default_rng(0).standard_normal(logits.shape), cache)
        assert all(np.all(np.isfinite(p.grad)) for p in model.parameters())
        # no memory is read: only the question (A1 = B) and the output (C3 = W^T) learn
        assert all(np.all(p.grad == 0) for p in (model.C1, model.C2, model.TA1, model.TC1))
        assert np.abs(model.C3.grad).max() > 0 and np.abs(model.A1.grad).max() > 0


def test_float32_is_preserved():
    r = np.random.default_rng(0)
    for tying in ("adjacent", "layerwise"):
        model = MemN2N(9, 4, 3, memory_size=5, tying=tying, rng=r)
        story, query = make_story(r, 2, 4, 3, 9)
        check_dtype_preserved(model, story, query)
        logits, cache = model.forward(story, query, linear_start=True)
        assert logits.dtype == np.float32 and cache.p.dtype == np.float32
        assert all(Mn.dtype == np.float32 for Mn in cache.M)
        assert cache.L.dtype == np.float32
    model64 = MemN2N(9, 4, 3, memory_size=5, rng=r).astype(F64)
    assert model64(story, query).dtype == F64


def test_predict_returns_answers_and_attention():
    model = MemN2N(9, 4, 2, memory_size=5, rng=0)
    story, query = make_story(np.random.default_rng(1), 3, 4, 3, 9)
    answer, p = model.predict(story, query)
    assert answer.shape == (3,) and p.shape == (3, 2, 4)
    assert np.array_equal(answer, np.argmax(model(story, query), -1))


def test_state_dict_round_trip():
    a = MemN2N(9, 4, 3, memory_size=5, rng=0)
    b = MemN2N(9, 4, 3, memory_size=5, rng=1)
    b.load_state_dict(a.state_dict())
    story, query = make_story(np.random.default_rng(1), 2, 4, 3, 9)
    assert np.array_equal(a(story, query), b(story, query))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("tying, public", [("adjacent", "A1"), ("layerwise", "B")])
def test_state_dict_holds_each_parameter_once_under_its_public_name(tying, public):
    """The question's table B is an alias (A1 or B), not a key of its own."""
    m = MemN2N(9, 4, 2, memory_size=5, tying=tying, rng=0)
    sd = m.state_dict()
    assert list(sd) == [n for n, _ in m.named_parameters()] and "_B" not in sd
    assert m._B is getattr(m, public)


@pytest.mark.parametrize("tying, public", [("adjacent", "A1"), ("layerwise", "B")])
def test_old_state_dict_with_the_private_alias_still_loads(tying, public):
    """Checkpoints written before held the question's table twice, also under
    '_B': they load (the alias read as the public key); an alias that disagrees
    with its public key is refused, naming both."""
    a = MemN2N(9, 4, 2, memory_size=5, tying=tying, rng=0)
    old = dict(a.state_dict(), _B=a.state_dict()[public])
    story, query = make_story(np.random.default_rng(1), 2, 4, 3, 9)
    b = MemN2N(9, 4, 2, memory_size=5, tying=tying, rng=1)
    assert b.load_state_dict(old) == {"missing_keys": [], "unexpected_keys": []}
    assert np.array_equal(a(story, query), b(story, query))
    only_alias = {k: v for k, v in old.items() if k != public}  # the alias alone also does
    c = MemN2N(9, 4, 2, memory_size=5, tying=tying, rng=2)
    c.load_state_dict(only_alias)
    assert np.array_equal(a(story, query), c(story, query))
    bad = dict(old, _B=old[public] + 1)
    with pytest.raises(ValueError, match=f"'_B'.*{public!r}"):
        MemN2N(9, 4, 2, memory_size=5, tying=tying, rng=1).load_state_dict(bad)
    with pytest.raises(ValueError, match="_B"):  # the alias with a wrong shape is named too
        MemN2N(9, 4, 2, memory_size=5, tying=tying, rng=1).load_state_dict(
            {k: v for k, v in dict(old, _B=np.zeros((2, 2))).items() if k != public})


def test_the_hops_run_the_shared_kernel(monkeypatch):
    """MemN2N calls functional.memnn_hop_forward / backward once per hop (the
    namespace kernels.select gives for the dtype), not a copy of the math."""
    from numtransformer import functional

    calls = []
    for name in ("memnn_hop_forward", "memnn_hop_backward"):
        real = getattr(functional, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(functional, name, spy)
    r = np.random.default_rng(0)
    m = MemN2N(9, 4, 3, memory_size=5, dtype=F64, rng=r)
    story, query = make_story(r, 2, 4, 3, 9)
    a, cache = m.forward(story, query)
    m.backward(np.ones_like(a), cache)
    assert calls == ["memnn_hop_forward"] * 3 + ["memnn_hop_backward"] * 3
    assert len(cache.hops) == 3 and np.array_equal(cache.p[:, 1], cache.hops[1].p)


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="MemN2N: tying"):
        MemN2N(9, 4, tying="rnn")
    with pytest.raises(ValueError, match="MemN2N: hops must be >= 1"):
        MemN2N(9, 4, 0)
    with pytest.raises(TypeError, match="MemN2N: d must be an int"):
        MemN2N(9, 4.0)
    with pytest.raises(ValueError, match="MemN2N: pad_id"):
        MemN2N(9, 4, pad_id=9)
    with pytest.raises(ValueError, match="MemN2N: init_std"):
        MemN2N(9, 4, init_std=0)
    with pytest.raises(TypeError, match="MemN2N: dtype"):
        MemN2N(9, 4, dtype=np.float16)


def test_bad_inputs_name_the_argument():
    m = MemN2N(9, 4, 2, memory_size=4, rng=0)
    story, query = make_story(np.random.default_rng(0), 2, 3, 3, 9)
    with pytest.raises(TypeError, match="MemN2N: story must be an integer array"):
        m.forward(story.astype(np.float32), query)
    with pytest.raises(ValueError, match="MemN2N: story contains id 9"):
        m.forward(np.where(story > 0, 9, 0), query)
    with pytest.raises(ValueError, match=r"MemN2N: story must have shape \(B, N, J\)"):
        m.forward(story[0], query)
    with pytest.raises(ValueError, match=r"MemN2N: query must have shape \(B, Jq\) with B=2"):
        m.forward(story, query[:1])
    with pytest.raises(ValueError, match="MemN2N: query contains id -1"):
        m.forward(story, query - 1)
    with pytest.raises(ValueError, match="N=5 sentence slots, expected at most memory_size=4"):
        m.forward(np.pad(story, ((0, 0), (0, 2), (0, 0))), query)
    with pytest.raises(ValueError, match="MemN2N: story_pad_mask has shape"):
        m.forward(story, query, np.zeros((2, 4), bool))
    with pytest.raises(TypeError, match="MemN2N: story_pad_mask must be boolean"):
        m.forward(story, query, np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="MemN2N: time contains id 4"):
        m.forward(story, query, time=np.full((2, 3), 4))
    with pytest.raises(ValueError, match="MemN2N: time has shape"):
        m.forward(story, query, time=np.zeros((2, 2), int))


def test_inputs_are_not_modified():
    m = MemN2N(9, 4, 2, memory_size=4, rng=0)
    story, query = make_story(np.random.default_rng(0), 2, 3, 3, 9)
    s0, q0 = story.copy(), query.copy()
    logits, cache = m.forward(story, query)
    da = np.random.default_rng(1).standard_normal(logits.shape).astype(np.float32)
    da0 = da.copy()
    m.backward(da, cache)
    assert np.array_equal(story, s0) and np.array_equal(query, q0) and np.array_equal(da, da0)


# --------------------------------------------------------------------------- learning
def test_learns_single_supporting_fact_quickly():
    from numtransformer.memnn_train import train_memnn

    data = make_babi(1, 1000, 50, 200, seed=11)
    result = train_memnn(1, data=data, epochs=12, optimizer="adam", lr=0.02, seed=0,
                         linear_start_epochs=0, random_noise=0.0, log=None)
    assert result["test_error"] <= 0.06, result["test_error"]  # 0.025 when written
    assert result["steps"] == 12 * 32
    # the first hop reads the sentence that answers the question
    batch = encode_babi(data.test[:50], data.tokenizer)
    _, p = result["model"].predict(batch.story, batch.query, batch.story_pad_mask)
    read = np.argmax(p.max(axis=1), axis=-1)
    assert np.mean(batch.support_mask[np.arange(50), read]) > 0.8


def test_random_noise_inserts_unmasked_empty_memories_and_keeps_order():
    from numtransformer.memnn_train import add_random_noise

    data = make_babi(2, 40, 0, 0, seed=0)
    batch = encode_babi(data.train, data.tokenizer, memory_size=20)
    noisy = add_random_noise(batch, 0.3, np.random.default_rng(0), memory_size=20)
    n_before = (~batch.story_pad_mask).sum(1)
    n_after = (~noisy.story_pad_mask).sum(1)
    assert np.all(n_after >= n_before) and np.all(n_after <= 20) and n_after.sum() > n_before.sum()
    for b in range(len(batch)):
        real = noisy.story[b][~noisy.story_pad_mask[b]]
        kept = real[(real != 0).any(-1)]  # the empty memories are all PAD, yet unmasked
        assert np.array_equal(kept, batch.story[b, : n_before[b]])
        assert noisy.support_mask[b].sum() == batch.support_mask[b].sum()
    assert np.array_equal(noisy.answer, batch.answer)


def test_train_memnn_rejects_bad_arguments():
    from numtransformer.memnn_train import train_memnn

    with pytest.raises(ValueError, match="unknown task 4"):
        train_memnn(4)
    with pytest.raises(ValueError, match="optimizer"):
        train_memnn(1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train_memnn(1, epochs=0)
    with pytest.raises(ValueError, match="every split needs"):
        train_memnn(1, data=make_babi(1, 5, 0, 5), log=None)


def test_gradcheck_cases_for_the_cli_pass():
    from numtransformer.gradcheck import gradcheck
    from numtransformer.cases.memnn import CASES as cases

    assert len(cases) == 7 and all(c.name.startswith("MemN2N(") for c in cases)
    for i, case in enumerate(cases):
        model, inputs, kwargs = case.build(np.random.default_rng([0, i]))
        gradcheck(model, *inputs, max_entries=12, **kwargs).assert_passed()


def test_train_memnn_counts_steps_and_returns_metrics():
    from numtransformer.memnn_train import train_memnn

    data = make_babi(1, 100, 10, 20, seed=0)
    result = train_memnn(1, data=data, steps=3, linear_start_epochs=1, log=None)
    assert result["steps"] == 3 and result["epochs"] == 1  # 4 batches of 32 per epoch
    assert {"train_error", "valid_error", "test_error", "seconds", "best_epoch"} <= set(result)
    assert 0.0 <= result["test_error"] <= 1.0 and isinstance(result["model"], MemN2N)
    lines = []
    result = train_memnn(1, data=data, steps=9, batch_size=16, linear_start_epochs=0,
                         log=lines.append, log_every=1)
    assert result["steps"] == 9 and result["epochs"] == 2 and len(lines) == 3


def test_cli_trains_a_memnn_whose_checkpoint_eval_reads_back(tmp_path, capsys):
    """`train --model memnn --task babi:1 --out D --json`, then `eval --checkpoint D`
    gives the same test error (the stories are regenerated from the saved settings)."""
    import json

    from numtransformer import cli
    from numtransformer.checkpoint import load_checkpoint, save_checkpoint
    from numtransformer.memnn_train import load_memnn

    out = str(tmp_path / "run")
    args = ["train", "--model", "memnn", "--task", "babi:1", "--epochs", "3", "--n-train",
            "200", "--out", out, "--json"]
    assert cli.main(args) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["task"] == "babi:1" and trained["model"] == "memnn"
    assert {"steps", "seconds", "loss", "token_accuracy", "exact_match"} <= set(trained)
    assert cli.main(["eval", "--checkpoint", out, "--json"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["error_rate"] == pytest.approx(trained["test_error"], abs=1e-12)
    assert ev["loss"] == pytest.approx(trained["test_loss"], rel=1e-6)
    # the other commands say what a memnn checkpoint is for, in one line
    assert cli.main(["decode", "--checkpoint", out, "where is mary?"]) == 2
    assert "memory-network run" in capsys.readouterr().err
    assert cli.main(args) == 2  # an existing checkpoint is never overwritten
    assert "already holds a checkpoint" in capsys.readouterr().err
    # forged settings are refused before any story is generated
    ck = load_checkpoint(out + "/checkpoint.npz")
    for change, message in ((dict(n_train=10**9), "n_train=1000000000"),
                            (dict(task=4), "unknown bAbI task"),
                            (dict(hops=True), "hops=True"),
                            (dict(vocab={"kind": "word", "tokens": []}), "vocabulary")):
        forged = str(tmp_path / "forged.npz")
        model, _, _ = load_memnn(out + "/checkpoint.npz")
        save_checkpoint(forged, model, dict(ck.config, **change))
        with pytest.raises(ValueError, match=message):
            load_memnn(forged)
    # a checkpoint of the previous format (the question's table also under the
    # private key '_B') still loads; one whose '_B' disagrees is refused, naming it
    with np.load(out + "/checkpoint.npz", allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    model, _, _ = load_memnn(out + "/checkpoint.npz")
    for alias, ok in ((arrays["param/A1"], True), (arrays["param/A1"] * 2, False)):
        old = str(tmp_path / "old.npz")
        np.savez(old, **arrays, **{"param/_B": alias})
        if ok:
            again, _, _ = load_memnn(old)
            assert all(np.array_equal(a, b) for a, b in zip(again.state_dict().values(),
                                                             model.state_dict().values()))
        else:
            with pytest.raises(ValueError, match="'_B'"):
                load_memnn(old)
