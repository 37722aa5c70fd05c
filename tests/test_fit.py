"""Layer scores on tiny random models whose answers are known by construction.

A decoder layer whose parameters are all zero is an exact identity in a pre-norm residual
network: its branches output zero, their gradients are zero, and h_out == h_in. Every
method must rank it least sensitive. FIT and the gate Fisher are also checked against
direct computations with plain autograd.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sdfp_edge.errors import SkipListError
from sdfp_edge.metadata import choose_skip_layers
from sdfp_edge.convert.fit import (
    BLOCK_METHODS,
    METHODS,
    block_parameters,
    find_decoder_layers,
    score_blocks,
    score_layers,
)

VOCAB = 96
N_LAYER = 6
ZEROED = 3


def tiny_model(arch: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = {
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": N_LAYER,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    }
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    return model.to(dtype)


def calib(n: int = 3, length: int = 24, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (length,), generator=g) for _ in range(n)]


def zero_layer(model: torch.nn.Module, index: int) -> None:
    with torch.no_grad():
        for p in find_decoder_layers(model)[index].parameters():
            p.zero_()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_zeroed_layer_scores_lowest_under_every_method(arch: str) -> None:
    model = tiny_model(arch)
    zero_layer(model, ZEROED)
    scores = score_layers(model, calib())
    assert set(scores) == set(METHODS)
    for method, s in scores.items():
        assert s.shape == (N_LAYER,) and s.dtype == np.float64, method
        others = np.delete(s, ZEROED)
        assert np.all(others > 0), (method, s)
        assert s[ZEROED] < others.min(), (method, s)
        assert choose_skip_layers(s, 1) == [ZEROED], method


def test_scores_reproducible_and_model_state_restored() -> None:
    model = tiny_model("llama")
    frozen = model.model.embed_tokens.weight
    frozen.requires_grad_(False)
    model.train()
    first = score_layers(model, calib(), seed=7)
    assert model.training and not frozen.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in find_decoder_layers(model).parameters())
    again = score_layers(tiny_model("llama"), calib(), seed=7)
    for m in METHODS:
        np.testing.assert_array_equal(first[m], again[m])
    # ...and the scores depend on the data: other sequences, other scores
    other = score_layers(model, calib(seed=2), seed=7)
    assert not np.array_equal(first["fit"], other["fit"])


def test_fit_equals_direct_fisher_trace_times_weight_variance() -> None:
    model = tiny_model("llama", seed=3)
    seqs = calib(n=2)
    got = score_layers(model, seqs, methods=("fit",))["fit"]

    layers = find_decoder_layers(model)
    trace = np.zeros(N_LAYER)
    for ids in seqs:
        ids = ids.unsqueeze(0)
        loss = model(input_ids=ids, labels=ids).loss
        grads = torch.autograd.grad(loss, [p for layer in layers for p in layer.parameters()])
        k = 0
        for i, layer in enumerate(layers):
            for _ in layer.parameters():
                trace[i] += float(grads[k].double().pow(2).sum())
                k += 1
    trace /= len(seqs)
    with torch.no_grad():
        sigma2 = np.array([
            float(sum(p.double().pow(2).sum() for p in layer.parameters()))
            / sum(p.numel() for p in layer.parameters())
            for layer in layers
        ])
    np.testing.assert_allclose(got, trace * sigma2, rtol=1e-4)


def test_gate_fisher_equals_weight_scaling_derivative() -> None:
    # In llama the attention branch is o_proj(...) and the MLP branch down_proj(...), both
    # without bias: a gate g on both is the same as scaling those two weights by g, so by
    # the chain rule dL/dg = <dL/dW_o, W_o> + <dL/dW_down, W_down> (plain autograd, no hooks).
    model = tiny_model("llama", seed=4)
    seqs = calib(n=2)
    got = score_layers(model, seqs, methods=("gate_fisher",))["gate_fisher"]

    layers = find_decoder_layers(model)
    weights = [w for layer in layers for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight)]
    want = np.zeros(N_LAYER)
    for ids in seqs:
        ids = ids.unsqueeze(0)
        grads = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, weights)
        for i in range(N_LAYER):
            d = sum(float((g * w).detach().double().sum()) for g, w in zip(grads[2 * i : 2 * i + 2], weights[2 * i : 2 * i + 2]))
            want[i] += d * d / len(seqs)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_block_influence_equals_hidden_state_cosine() -> None:
    model = tiny_model("qwen2", seed=5)
    seqs = calib(n=2)
    got = score_layers(model, seqs, methods=("block_influence",))["block_influence"]
    want = np.zeros(N_LAYER - 1)  # hidden_states[-1] is after the final norm: compare the others
    with torch.no_grad():
        for ids in seqs:
            hs = model(input_ids=ids.unsqueeze(0), output_hidden_states=True).hidden_states
            for i in range(N_LAYER - 1):
                cos = torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1)
                want[i] += float((1 - cos).mean()) / len(seqs)
    np.testing.assert_allclose(got[:-1], want, rtol=1e-5)


def test_score_layers_rejects_bad_input() -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="unknown scoring method"):
        score_layers(model, calib(), methods=("fisher",))
    with pytest.raises(ValueError, match="no calibration sequences"):
        score_layers(model, [])
    with pytest.raises(ValueError, match="T >= 2"):
        score_layers(model, [torch.tensor([5])])


# --- choose_skip_layers ----------------------------------------------------------------


def test_choose_skip_layers_keeps_first_and_last() -> None:
    scores = np.array([0.0, 5.0, 1.0, 4.0, 2.0, 0.5])  # first and last are the lowest
    assert choose_skip_layers(scores, 2) == [2, 4]
    assert choose_skip_layers(scores, 2, keep_first=False) == [0, 2]
    assert choose_skip_layers(scores, 4) == [1, 2, 3, 4]
    assert choose_skip_layers(scores, 0) == []
    assert choose_skip_layers([1.0, 1.0, 1.0, 1.0], 1) == [1]  # ties: lower index


@pytest.mark.parametrize("n_skip", [-1, 5, 7])
def test_choose_skip_layers_rejects_impossible_counts(n_skip: int) -> None:
    with pytest.raises(SkipListError, match="cannot skip"):
        choose_skip_layers(np.arange(6.0), n_skip)


def test_choose_skip_layers_rejects_bad_scores() -> None:
    with pytest.raises(SkipListError, match="NaN"):
        choose_skip_layers([1.0, float("nan"), 2.0, 3.0], 1)
    with pytest.raises(SkipListError, match="integer"):
        choose_skip_layers([1.0, 2.0, 3.0], 1.0)  # type: ignore[arg-type]
    with pytest.raises(SkipListError, match="1-D"):
        choose_skip_layers([], 0)
    with pytest.raises(SkipListError, match="at most 4"):
        choose_skip_layers(np.zeros(6), 5)


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=40),
    data=st.data(),
    keep_first=st.booleans(),
)
def test_choose_skip_layers_picks_the_lowest_candidates(scores: list[float], data: st.DataObject,
                                                         keep_first: bool) -> None:
    n = len(scores)
    candidates = [i for i in range(n - 1) if i > 0 or not keep_first]
    k = data.draw(st.integers(0, len(candidates)))
    chosen = choose_skip_layers(scores, k, keep_first=keep_first)
    assert chosen == sorted(set(chosen)) and len(chosen) == k
    assert n - 1 not in chosen and (not keep_first or 0 not in chosen)
    rest = [i for i in candidates if i not in chosen]
    if chosen and rest:
        assert max(scores[i] for i in chosen) <= min(scores[i] for i in rest)


# --- attention and MLP blocks ------------------------------------------------------------


def zero_mlp(model: torch.nn.Module, index: int) -> None:
    with torch.no_grad():
        for p in find_decoder_layers(model)[index].mlp.parameters():
            p.zero_()


def tiny_gemma3(*, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYER,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    )
    return transformers.Gemma3ForCausalLM(config)


def manual_groups(layer: torch.nn.Module, arch: str) -> tuple[list, list]:
    """The expected split, written out by hand for each layout."""
    if arch == "gemma3":
        attn = [*layer.self_attn.parameters(), layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
        ffn = [*layer.mlp.parameters(), layer.pre_feedforward_layernorm.weight, layer.post_feedforward_layernorm.weight]
    else:
        attn = [*layer.self_attn.parameters(), layer.input_layernorm.weight]
        ffn = [*layer.mlp.parameters(), layer.post_attention_layernorm.weight]
    return attn, ffn


def any_model(arch: str, *, seed: int = 0) -> torch.nn.Module:
    return tiny_gemma3(seed=seed) if arch == "gemma3" else tiny_model(arch, seed=seed)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_block_parameters_split_every_parameter_once(arch: str) -> None:
    for layer in find_decoder_layers(any_model(arch)):
        attn, ffn = block_parameters(layer)
        want_attn, want_ffn = manual_groups(layer, arch)
        assert {id(p) for p in attn} == {id(p) for p in want_attn}
        assert {id(p) for p in ffn} == {id(p) for p in want_ffn}
        assert len(attn) + len(ffn) == len(list(layer.parameters()))


def test_block_parameters_leave_a_third_branch_out_and_refuse_a_shared_parameter() -> None:
    layer = torch.nn.Module()
    layer.self_attn, layer.mlp, layer.extra = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    attn, ffn = block_parameters(layer)  # like Gemma 4's per-layer input: in neither block
    assert {id(p) for p in attn} == {id(p) for p in layer.self_attn.parameters()}
    assert {id(p) for p in ffn} == {id(p) for p in layer.mlp.parameters()}
    layer.mlp = layer.self_attn
    with pytest.raises(ValueError, match="shared by both"):
        block_parameters(layer)
    bare = torch.nn.Module()
    bare.linear = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="cannot find the attention and MLP"):
        block_parameters(bare)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_zeroed_mlp_scores_lowest_ffn_while_its_attention_counts(arch: str) -> None:
    model = any_model(arch)
    zero_mlp(model, ZEROED)
    scores = score_blocks(model, calib())
    assert set(scores) == set(BLOCK_METHODS)
    for method, parts in scores.items():
        assert set(parts) == {"layer", "attn", "ffn"}, method
        for part in parts.values():
            assert part.shape == (N_LAYER,) and part.dtype == np.float64, method
        ffn, attn = parts["ffn"], parts["attn"]
        assert ffn[ZEROED] == 0.0 and np.all(np.delete(ffn, ZEROED) > 0), (method, ffn)
        assert np.all(attn > 0), (method, attn)  # the layer's attention is scored as usual
        assert parts["layer"][ZEROED] > 0, method


def test_score_blocks_whole_layers_equal_score_layers() -> None:
    model = tiny_model("qwen2", seed=6)
    seqs = calib(n=2)
    layers_only = score_layers(model, seqs)
    blocks = score_blocks(model, seqs, methods=METHODS)
    assert set(blocks["block_influence"]) == {"layer"}  # whole layers only
    for m in METHODS:
        np.testing.assert_allclose(blocks[m]["layer"], layers_only[m], rtol=1e-5)
    # whole-layer FIT is not the sum of the block scores: each group has its own mean(theta^2)
    assert not np.allclose(blocks["fit"]["layer"], blocks["fit"]["attn"] + blocks["fit"]["ffn"])


def test_block_fit_equals_direct_fisher_trace_times_weight_variance() -> None:
    model = tiny_model("llama", seed=3)
    seqs = calib(n=2)
    got = score_blocks(model, seqs, methods=("fit",))["fit"]

    groups = [g for layer in find_decoder_layers(model) for g in manual_groups(layer, "llama")]  # [2 * n_layer]
    trace = np.zeros(2 * N_LAYER)
    for ids in seqs:
        ids = ids.unsqueeze(0)
        grads = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, [p for g in groups for p in g])
        k = 0
        for j, g in enumerate(groups):
            for _ in g:
                trace[j] += float(grads[k].double().pow(2).sum()) / len(seqs)
                k += 1
    with torch.no_grad():
        sigma2 = np.array([float(sum(p.double().pow(2).sum() for p in g)) / sum(p.numel() for p in g)
                           for g in groups])
    want = (trace * sigma2).reshape(N_LAYER, 2)
    np.testing.assert_allclose(got["attn"], want[:, 0], rtol=1e-4)
    np.testing.assert_allclose(got["ffn"], want[:, 1], rtol=1e-4)


def test_block_gate_fisher_equals_weight_scaling_derivative() -> None:
    # as for whole layers: a gate on the attention branch scales o_proj, one on the MLP
    # branch scales down_proj, so dL/dg_attn = <dL/dW_o, W_o>, dL/dg_ffn = <dL/dW_down, W_down>
    model = tiny_model("llama", seed=4)
    seqs = calib(n=2)
    got = score_blocks(model, seqs, methods=("gate_fisher",))["gate_fisher"]

    layers = find_decoder_layers(model)
    weights = [w for layer in layers for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight)]
    want = np.zeros(2 * N_LAYER)
    for ids in seqs:
        ids = ids.unsqueeze(0)
        grads = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, weights)
        want += np.array([float((g * w).detach().double().sum()) ** 2 for g, w in zip(grads, weights)]) / len(seqs)
    np.testing.assert_allclose(got["attn"], want[0::2], rtol=1e-4)
    np.testing.assert_allclose(got["ffn"], want[1::2], rtol=1e-4)


@pytest.mark.parametrize("tied", [False, True])
def test_block_costs_are_parameter_shares(tied: bool) -> None:
    from sdfp_edge.convert.block_choice import block_costs

    model = tiny_model("llama")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    attn, ffn = block_costs(model)
    layer = find_decoder_layers(model)[0]
    n_attn = sum(p.numel() for p in manual_groups(layer, "llama")[0])
    n_ffn = sum(p.numel() for p in manual_groups(layer, "llama")[1])
    total = N_LAYER * (n_attn + n_ffn) + VOCAB * 64  # the head counts whether tied or not
    np.testing.assert_allclose(attn, n_attn / total)
    np.testing.assert_allclose(ffn, n_ffn / total)
