"""Per-decoder-layer sensitivity scores: which layers can the draft leave out?

A draft that skips decoder layer l runs the same model with that layer's residual
branches removed. The cheapest layers to remove are those whose removal changes the
language-model loss least. Three estimates of that change, each higher = more sensitive:

"fit" -- Fisher Information Trace (FIT, Zandonati et al., "FIT: A Metric for Model
Sensitivity", ICLR 2023). Expand the expected loss around the trained parameters theta
for a small zero-mean perturbation delta, independent across parameters:

    E[dL] ~ g^T E[delta] + 1/2 E[delta^T H delta] = 1/2 sum_i H_ii E[delta_i^2]

(the gradient term vanishes in expectation; cross terms vanish by independence). At a
(near) minimum the Hessian is approximated by the empirical Fisher F, whose diagonal is
the mean squared per-sample gradient. Grouping the parameters of layer l and taking the
perturbation variance as constant within the group:

    E[dL_l] ~ 1/2 Tr(F_l) sigma_l^2,
    Tr(F_l) = (1/N) sum_n ||grad_{theta_l} loss(x_n)||^2      (N calibration sequences)

Removing a layer moves each of its parameters to zero, delta = -theta, so the
perturbation variance is sigma_l^2 = mean(theta_l^2). The score is Tr(F_l) * sigma_l^2
(the constant 1/2 dropped). This is a large perturbation for a second-order expansion:
the score ranks layers, it does not predict the loss.

"gate_fisher" -- a scalar gate g_l = 1 multiplies both residual branches of layer l
(attention output and MLP output). Setting g_l = 0 removes exactly those branches, i.e.
exactly what the draft does. Its expected second-order loss change is
1/2 F_gg (dg)^2 = 1/2 F_gg with F_gg = (1/N) sum_n (d loss(x_n) / d g_l)^2: the score.

"block_influence" -- ShortGPT's Block Influence (Men et al., 2024): the mean over
tokens of 1 - cos(h_in, h_out), h_in and h_out the hidden states entering and leaving
layer l. No gradient.

All three run one forward (and, for the first two, one backward) per calibration
sequence. Squared gradients are summed per layer by hooks that fire as each parameter's
gradient is ready and then drop it, so at most one parameter's gradient exists at a time:
peak memory is the model plus one sequence's activations (a 7-8B model in bf16 fits in
32 GB with sequences of a few hundred tokens).

Sub-layer blocks: a draft may also leave out only the attention block or only the MLP
block of a layer. `score_blocks` scores both in the same passes as the whole layers:
"fit" restricted to each block's parameters (its own Fisher trace times its own
mean(theta^2): the whole-layer score is not the sum of the two), "gate_fisher" with one
gate per residual branch (dL/dg_layer = dL/dg_attn + dL/dg_ffn at g = 1).
"block_influence" stays whole-layer only. `block_parameters` says which parameters
belong to which block; sdfp_edge.convert.block_choice chooses blocks from the scores.

Example (model: a transformers causal LM, sequences: calibration token ids):

    scores = score_layers(model, sequences, methods=("fit",))     # {"fit": [n_layer]}
    skip = choose_skip_layers(scores["fit"], 6)   # the 6 least sensitive, sorted
    blocks = score_blocks(model, sequences, methods=("fit",))
    # {"fit": {"layer": [n_layer], "attn": [n_layer], "ffn": [n_layer]}}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from sdfp_edge.errors import SkipListError

METHODS = ("fit", "gate_fisher", "block_influence")
BLOCK_METHODS = ("fit", "gate_fisher")  # the methods that also score attention and MLP blocks

# Norms outside the attention / MLP modules, by the block they feed or finish. A
# pre-norm layer's post_attention_layernorm is the MLP's input norm; a sandwich-norm
# layer's (gemma2/3) is the attention output's norm.
_ATTN_NORMS = ("input_layernorm", "ln_1")
_FFN_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm", "ln_2")

def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers, in order (e.g. `model.model.layers` for llama/qwen/gemma).

    Found from the model's structure, whatever its attribute names: a ModuleList of as many
    modules of one class as the (text) config has hidden layers; where several qualify (a
    vision tower of the same depth), the one holding the most parameters.
    """
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    n_layer = getattr(text, "num_hidden_layers", None)
    found: list[nn.ModuleList] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1:
            if n_layer is None or len(module) == n_layer:
                found.append(module)
    if not found:
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__}: no list of {n_layer} layers of one kind"
        )
    return max(found, key=lambda m: sum(p.numel() for p in m.parameters()))


def residual_branches(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The two modules whose outputs are added to the residual stream of a decoder layer.

    Pre-norm layers (llama, qwen2/3, mistral) add `self_attn` and `mlp` outputs directly.
    Sandwich-norm layers (gemma2/3) normalise each branch before adding it, so the gate
    must go after that norm: `post_attention_layernorm` and `post_feedforward_layernorm`.
    """
    attn: nn.Module | None
    mlp: nn.Module | None
    if hasattr(layer, "post_feedforward_layernorm") and hasattr(layer, "post_attention_layernorm"):
        attn, mlp = layer.get_submodule("post_attention_layernorm"), layer.get_submodule("post_feedforward_layernorm")
    else:
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
        mlp = getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None)
    if attn is None or mlp is None:
        raise ValueError(f"cannot find the attention and MLP branches of {type(layer).__name__}")
    return attn, mlp


def block_parameters(layer: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(attention parameters, MLP parameters) of a decoder layer: every parameter in one.

    Attention: the attention module and the norms around it (`input_layernorm`, and
    `post_attention_layernorm` in sandwich-norm layers); MLP: the MLP module and its norms
    (`post_attention_layernorm` in pre-norm layers, `pre_/post_feedforward_layernorm`).

    Parameters of a third residual branch (Gemma 4's per-layer input) are in neither: the
    runtime's block masks leave that branch in place, and only a whole-layer skip removes it.
    The modules are found by name (`self_attn`/`attn`, `mlp`/`feed_forward`), else by
    transformers' class naming (a child whose class name ends in Attention, and one that
    is an MLP, MoE block or feed-forward).

    Raises:
        ValueError: no attention or no MLP module, or a parameter shared by both.
    """
    attn_mod, mlp_mod = _branch_modules(layer)
    sandwich = hasattr(layer, "post_feedforward_layernorm")
    attn_names = (*_ATTN_NORMS, "post_attention_layernorm") if sandwich else _ATTN_NORMS
    ffn_names = _FFN_NORMS if sandwich else (*_FFN_NORMS, "post_attention_layernorm")
    attn = list(attn_mod.parameters()) + _norm_params(layer, attn_names)
    ffn = list(mlp_mod.parameters()) + _norm_params(layer, ffn_names)
    placed = {id(p) for p in attn + ffn}
    if len(placed) != len(attn) + len(ffn):
        raise ValueError(f"cannot split {type(layer).__name__} into attention and MLP blocks: "
                         "a parameter shared by both")
    return attn, ffn


def _branch_modules(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    attn_mod = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
    mlp_mod = getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None)
    for child in layer.children():
        kind = type(child).__name__.lower()
        if attn_mod is None and kind.endswith("attention"):
            attn_mod = child
        elif mlp_mod is None and any(k in kind for k in ("mlp", "moe", "feedforward", "experts")):
            mlp_mod = child
    if attn_mod is None or mlp_mod is None:
        raise ValueError(f"cannot find the attention and MLP modules of {type(layer).__name__}")
    return attn_mod, mlp_mod


def score_blocks(
    model: nn.Module,
    sequences: Sequence[torch.Tensor],
    *,
    methods: Iterable[str] = BLOCK_METHODS,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
    """Score every decoder layer and its attention and MLP blocks, in one pass.

    Same arguments as `score_layers` (methods may include "block_influence", scored for
    whole layers only).

    Returns:
        {method: {"layer": [n_layer], "attn": [n_layer], "ffn": [n_layer]}}, float64,
        higher = more sensitive; "layer" equals `score_layers` up to float rounding;
        "block_influence" has "layer" only.
    """
    return _score(model, sequences, methods=methods, blocks=True, device=device, seed=seed, progress=progress)


def score_layers(
    model: nn.Module,
    sequences: Sequence[torch.Tensor],
    *,
    methods: Iterable[str] = METHODS,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, npt.NDArray[np.float64]]:
    """Score every decoder layer of a causal LM on calibration sequences.

    Args:
        model: a Hugging Face causal LM (returns `.loss` when given `labels`). It is moved
            to `device` unless it was loaded with a device map; its train/eval mode and
            `requires_grad` flags are restored on return.
        sequences: token ids, each of shape [T] or [1, T] with T >= 2.
        methods: any of "fit", "gate_fisher", "block_influence".
        device: "cpu", "cuda", "cuda:1", "mps"...
        seed: seeds torch before scoring (the scores themselves have no randomness).
        progress: show a tqdm progress bar over the sequences.

    Returns:
        {method: scores}, scores of shape [n_layer], float64, higher = more sensitive.
    """
    scores = _score(model, sequences, methods=methods, blocks=False, device=device, seed=seed, progress=progress)
    return {m: by_part["layer"] for m, by_part in scores.items()}


def _score(
    model: nn.Module,
    sequences: Sequence[torch.Tensor],
    *,
    methods: Iterable[str],
    blocks: bool,
    device: str,
    seed: int,
    progress: bool,
) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
    """The pass behind score_layers and score_blocks.

    Gradients are summed per (layer, group): one group per layer without blocks (the
    layer's parameters, one gate shared by both branches), two with blocks (attention,
    MLP; one gate per branch). Whole-layer values are the sums over groups.
    """
    methods = tuple(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown scoring method(s) {unknown}; choose from {', '.join(METHODS)}")
    seqs = [_as_batch(s) for s in sequences]
    if not seqs:
        raise ValueError("no calibration sequences")

    layers = find_decoder_layers(model)
    n_layer = len(layers)
    # groups[l]: the parameter groups of layer l, scored apart (one gate each)
    groups = [block_parameters(layer) if blocks else (list(layer.parameters()),) for layer in layers]
    n_group = 2 if blocks else 1
    need_grad = "fit" in methods or "gate_fisher" in methods
    torch.manual_seed(seed)
    if getattr(model, "hf_device_map", None) is None:
        model.to(device)
    run_device = next(model.parameters()).device

    sq_grad = torch.zeros(n_layer, n_group, dtype=torch.float64)  # [n_layer, n_group] sum_n ||grad||^2
    gate_sq = torch.zeros(n_layer, dtype=torch.float64)  # [n_layer] sum_n (dL/dg_l)^2
    branch_sq = torch.zeros(n_layer, 2, dtype=torch.float64)  # [n_layer, 2] sum_n (dL/dg_branch)^2
    bi_sum = torch.zeros(n_layer, dtype=torch.float64)  # [n_layer] sum_n mean_t (1 - cos)
    per_seq = torch.zeros(n_layer, n_group, dtype=torch.float32, device=run_device)
    def new_gate() -> torch.Tensor:
        return torch.ones((), device=run_device, requires_grad=True)

    # gates[l]: the gates of layer l's branches (attention, MLP); one gate for both without blocks
    gates = [[new_gate(), new_gate()] if blocks else [new_gate()] * 2 for _ in range(n_layer)]

    was_training = model.training
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    layer_params = {id(p) for layer in layers for p in layer.parameters()}
    model.eval()
    try:
        with ExitStack() as stack:
            for p in model.parameters():
                # Only the decoder layers' gradients are needed (FIT); for the gates alone
                # no parameter needs one: backward then stops at the gates.
                p.requires_grad_("fit" in methods and id(p) in layer_params)
            if "fit" in methods:
                for l, layer_groups in enumerate(groups):
                    for g, params in enumerate(layer_groups):
                        for p in params:
                            h = p.register_post_accumulate_grad_hook(_sq_grad_hook(per_seq, l, g))
                            stack.callback(h.remove)
            if "gate_fisher" in methods:
                for layer, layer_gates in zip(layers, gates):
                    for branch, gate in zip(residual_branches(layer), layer_gates):
                        stack.callback(branch.register_forward_hook(_gate_hook(gate)).remove)
            bi_seq: list[float] = [0.0] * n_layer
            if "block_influence" in methods:
                for l, layer in enumerate(layers):
                    h = layer.register_forward_hook(_influence_hook(bi_seq, l), with_kwargs=True)
                    stack.callback(h.remove)

            for ids in _progress(seqs, progress):
                ids = ids.to(run_device)
                with torch.set_grad_enabled(need_grad):
                    out = model(input_ids=ids, labels=ids, use_cache=False)
                if need_grad:
                    per_seq.zero_()
                    out.loss.backward()
                    sq_grad += per_seq.double().cpu()
                    for l, layer_gates in enumerate(gates):
                        d = [_take_grad(gate) for gate in (layer_gates if blocks else layer_gates[:1])]
                        gate_sq[l] += sum(d) ** 2  # at g = 1, dL/dg_layer = sum of the branch derivatives
                        if blocks:
                            branch_sq[l] += torch.tensor(d, dtype=torch.float64) ** 2
                bi_sum += torch.tensor(bi_seq, dtype=torch.float64)
                del out
    finally:
        for p, flag in requires_grad.items():
            p.grad = None
            p.requires_grad_(flag)
        model.train(was_training)

    n = len(seqs)
    result: dict[str, dict[str, npt.NDArray[np.float64]]] = {}
    if "fit" in methods:
        sigma2 = np.array([_mean_square(layer.parameters()) for layer in layers])
        result["fit"] = {"layer": (sq_grad.sum(dim=1) / n).numpy() * sigma2}
        if blocks:
            block_sigma2 = np.array([[_mean_square(params) for params in layer_groups] for layer_groups in groups])
            trace = (sq_grad / n).numpy() * block_sigma2  # [n_layer, 2]
            result["fit"].update(attn=trace[:, 0].copy(), ffn=trace[:, 1].copy())
    if "gate_fisher" in methods:
        result["gate_fisher"] = {"layer": (gate_sq / n).numpy()}
        if blocks:
            fisher = (branch_sq / n).numpy()  # [n_layer, 2]
            result["gate_fisher"].update(attn=fisher[:, 0].copy(), ffn=fisher[:, 1].copy())
    if "block_influence" in methods:
        result["block_influence"] = {"layer": (bi_sum / n).numpy()}
    return {m: result[m] for m in methods}


# --- helpers -------------------------------------------------------------------------


def _as_batch(ids: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(ids, dtype=torch.long)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[0] != 1 or t.shape[1] < 2:
        raise ValueError(f"each calibration sequence must be [T] or [1, T] with T >= 2, got {tuple(t.shape)}")
    return t


def _sq_grad_hook(acc: torch.Tensor, layer: int, group: int) -> Callable[[torch.Tensor], None]:
    def hook(p: torch.Tensor) -> None:
        assert p.grad is not None
        acc[layer, group] += torch.linalg.vector_norm(p.grad, dtype=torch.float32).square()
        p.grad = None  # free it now: never more than one parameter's gradient alive

    return hook


def _gate_hook(gate: torch.Tensor) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (output[0] * gate.to(output[0].dtype), *output[1:])
        return output * gate.to(output.dtype)

    return hook


def _take_grad(gate: torch.Tensor) -> float:
    """The gate's derivative (0 if the loss does not depend on it), cleared for the next sequence."""
    d = 0.0 if gate.grad is None else float(gate.grad)
    gate.grad = None
    return d


def _norm_params(layer: nn.Module, names: Iterable[str]) -> list[nn.Parameter]:
    return [p for name in names if isinstance(getattr(layer, name, None), nn.Module)
            for p in getattr(layer, name).parameters()]


def _influence_hook(acc: list[float], layer: int) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        h_in = args[0] if args else kwargs["hidden_states"]
        h_out = output[0] if isinstance(output, tuple) else output
        cos = nn.functional.cosine_similarity(h_in.detach().float(), h_out.detach().float(), dim=-1)
        acc[layer] = float((1.0 - cos).mean())

    return hook


def _mean_square(params: Iterable[torch.Tensor]) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for p in params:
            total += float(torch.linalg.vector_norm(p, dtype=torch.float32)) ** 2
            count += p.numel()
    return total / count if count else math.nan


def _progress(seqs: list[torch.Tensor], enabled: bool) -> Iterable[torch.Tensor]:
    if not enabled:
        return seqs
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    return tqdm(seqs, desc="scoring layers", unit="seq")
