"""Parallel sequences in one context: each prompt's output is what decoding it alone gives."""

from __future__ import annotations

from typing import Any

from pathlib import Path

import numpy as np
import pytest

from sdfp_edge.api import Model
from sdfp_edge.runtime.controller import Acceptance, Candidate, Controller
from sdfp_edge.errors import ContextOverflowError, InvalidRequestError
from sdfp_edge.runtime.backend import common_prefix_len
from sdfp_edge.runtime.parallel import ParallelDecoder, Request, allocate_drafts, prefill_cuts, stream_batch_seconds
from sdfp_edge.runtime.prefill_splits import CPU_ROW_GROUP, CPU_WHOLE_TILE, reusable
from sdfp_edge.runtime.sampling import SamplingParams

# long enough (over 64 tokens: CPU_WHOLE_TILE) that later prompts reuse its KV inside a batch
SYSTEM = ("You are a careful assistant. Answer briefly and copy names exactly as given. When a "
          "question asks for a list, give the list and nothing else; when it asks for code, give "
          "the code in one block; when it asks for a number, give the number first and then one "
          "short sentence that explains how you found it.")
QUESTIONS = [
    "Copy this list exactly: apples, pears, plums, apples, pears, plums.",
    "Explain in two sentences why the sky is blue.",
    "Rename x to total:\ndef f(x):\n    x = x + 1\n    return x * x\n",
    "Name three colours.",
    "What is 12 times 3?",
]
SEQ_CTX = 512


# --- pricing a batch (pure) -------------------------------------------------------------------
def linear(a: float, b: float):
    return lambda n: a + b * n


def one_pass(verify):
    """A batch decoded in one pass (a unified cache, or equal counts)."""
    return lambda counts: verify(sum(counts))


def test_a_batch_over_streams_is_priced_by_its_slices() -> None:
    t = linear(1.0, 0.1)
    assert stream_batch_seconds([0, 1, 2], [1, 5, 1], t) == pytest.approx(t(3) + t(4))
    assert stream_batch_seconds([0, 1, 2], [2, 2, 2], t) == pytest.approx(t(6))
    assert stream_batch_seconds([0, 2], [1, 1], t) == pytest.approx(2 * t(1))  # not consecutive: two runs


def test_a_single_sequence_gets_what_the_controller_chooses() -> None:
    c = Controller()
    for n in range(1, 7):  # a batch-friendly curve: an extra token costs 0.2 of the first
        c.cost.observe_verify(n, 1.0 + 0.2 * (n - 1))
    ks = []
    for reached, accepted in (([100, 90, 72, 50, 30], [90, 72, 50, 30, 15]),  # a copy run
                              ([100, 10, 1, 0, 0], [10, 1, 0, 0, 0])):  # free text
        c.acceptance["s"] = Acceptance([float(x) for x in reached], [float(x) for x in accepted])
        want = c.choose([Candidate("lookup", 5, "s", cost_prior=0.0)])
        got = allocate_drafts([c.acceptance["s"].rates(5, optimistic=True)], one_pass(c.cost.verify),
                              max_batch=64, margin=c.margin)
        assert got == [want.k]
        ks.append(want.k)
    assert ks[0] > 0 and ks[1] == 0


def test_drafts_pay_less_as_the_batch_grows() -> None:
    """On a compute-bound curve (V(4) = 1.81: this CPU on Qwen 1.5B) each sequence gets fewer
    drafts as more sequences share the batch, none at 8; on a flat (GPU-like) curve all pay."""
    cpu = linear(1.0 - 0.27, 0.27)  # t(1) = 1, t(4) = 1.81
    rates = [0.75, 0.7, 0.65, 0.6]
    per_seq = [max(allocate_drafts([rates] * n, one_pass(cpu), max_batch=64)) for n in (1, 2, 4, 8)]
    assert per_seq == sorted(per_seq, reverse=True) and per_seq[0] > per_seq[2] and per_seq[-1] == 0
    gpu = linear(1.0, 0.01)
    assert allocate_drafts([rates] * 4, one_pass(gpu), max_batch=64) == [4, 4, 4, 4]
    assert sum(allocate_drafts([rates] * 4, one_pass(gpu), max_batch=10)) == 10 - 4  # the size limit


def test_drafts_go_to_the_sequence_whose_drafts_are_accepted() -> None:
    ks = allocate_drafts([[0.95] * 6, [0.1] * 6], one_pass(linear(0.8, 0.2)), max_batch=64)
    assert ks[0] > 0 and ks[1] == 0
    assert allocate_drafts([[0.99] * 4], one_pass(linear(0.0, 1.0)), max_batch=64) == [0]  # never pays


def test_split_batches_draft_all_sequences_alike_or_none() -> None:
    """Over per-sequence streams one sequence's drafts cost a pass of their own; drafts for
    every sequence share one pass."""
    gpu = linear(1.0, 0.01)
    split = lambda counts: stream_batch_seconds([0, 1, 2], counts, gpu)  # noqa: E731
    assert allocate_drafts([[0.9] * 4, [], []], split, max_batch=64) == [0, 0, 0]  # only one has drafts
    ks = allocate_drafts([[0.9] * 4] * 3, split, max_batch=64)
    assert len(set(ks)) == 1 and ks[0] > 0


# --- real model ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def single(smollm2_plain: Path):
    m = Model(smollm2_plain, n_ctx=SEQ_CTX, n_threads=2, cost_cache=False)  # prefills as batch mode's
    yield m
    m.close()


@pytest.fixture(scope="module")
def par(smollm2_plain: Path):
    m = Model(smollm2_plain, n_ctx=SEQ_CTX * 3, n_threads=2, n_seq_max=3, cost_cache=False)
    yield m
    m.close()


def chat_ids(m: Model, question: str) -> list[int]:
    return m.tokenize_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])


@pytest.mark.parametrize("mode", ["off", "lookup", "auto"])
def test_greedy_each_prompt_matches_decoding_it_alone(single: Model, par: Model, mode: str) -> None:
    """Bit for bit on SmolLM2 Q4_1: each sequence has its own KV stream, so its attention is
    computed as when it is alone (a unified cache was measured to flip tokens: parallel.py)."""
    n = 24
    alone = {}
    for i, q in enumerate(QUESTIONS):
        single.backend.reset()  # each prompt from an empty cache: decoding it alone
        alone[i] = single.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                               max_tokens=n, mode="off", temperature=0)
    dec = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode=mode)
    reqs = [Request(i, chat_ids(par, q), n) for i, q in enumerate(QUESTIONS)]
    results = {r.key: r for r in dec.run(reqs)}
    assert sorted(results) == list(range(len(QUESTIONS)))
    for i, r in results.items():
        ref = alone[i]
        tokens = r.tokens[:-1] if par.backend.is_eog(r.tokens[-1]) else r.tokens  # the API drops EOS
        assert (tokens, r.text, r.finish_reason) == (ref.tokens, ref.text, ref.finish_reason), i
    # five prompts on three slots: later ones reuse the shared system prompt's KV (seq_cp)
    assert sum(r.reused_tokens > 0 for r in results.values()) >= 2
    if mode == "lookup":
        assert sum(r.drafted for r in results.values()) > 0
    if mode == "off":
        assert sum(r.drafted for r in results.values()) == 0


def test_a_prompt_admitted_while_another_decodes_is_prefilled_a_chunk_per_step(par: Model) -> None:
    """The server's admission (interleave=True): the decoding slot gets a token at every step
    while the new prompt's prefill goes one chunk per step, and both texts are what each gives
    alone, bit for bit (the parts give the whole prefill's KV: prefill_splits)."""
    n = 20
    a = chat_ids(par, QUESTIONS[1])
    # under 256 positions with its answer: past them llama.cpp decodes a lone token another way
    # than one beside another stream (parallel.py), and its text could part at a near-tie
    b = chat_ids(par, "Repeat this code exactly:\n" + QUESTIONS[2] * 5)
    assert len(b) + n <= 256
    alone = {}
    for key, prompt in (("a", a), ("b", b)):
        (r,) = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off").run([Request(key, prompt, n)])
        alone[key] = (r.tokens, r.text, r.finish_reason)
    dec = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off")
    first = dec.admit(Request("a", a, n), interleave=True)
    assert first is not None and first.tokens  # nothing else decoding: prefilled whole at once
    (second,) = dec.step()  # a streams
    assert second.key == "a" and second.tokens
    assert dec.admit(Request("b", b, n), interleave=True) is None
    slot_b = next(s for s in dec.slots if s.req is not None and s.req.key == "b")
    chunks = len(slot_b.pending)
    assert chunks >= 2  # the shared system prompt is copied, the rest is several parts
    assert all(z - a >= CPU_WHOLE_TILE for a, z in slot_b.pending)
    results = {}
    for step in range(1, chunks + 1):
        updates = {u.key: u for u in dec.step()}
        results.update({k: u.result for k, u in updates.items() if u.result is not None})
        assert updates["a"].tokens, f"slot a got no token at step {step}"
        assert ("b" in updates) == (step == chunks)  # b's first token with its last chunk
        assert len(slot_b.pending) == chunks - step
    while dec.active:
        results.update({u.key: u.result for u in dec.step() if u.result is not None})
    for key in ("a", "b"):
        r = results[key]
        assert (r.tokens, r.text, r.finish_reason) == alone[key], key
    assert results["b"].reused_tokens >= CPU_WHOLE_TILE and results["b"].t_prefill > 0


def test_prompts_arriving_together_are_prefilled_whole_each_with_its_first_token(par: Model) -> None:
    """A burst: until a stream has decoded past its first token, an interleaved admission
    prefills whole and returns the first token at once (no stream waits on chunks of the
    others, no later prompt waits on the first stream's steps); texts as alone, bit for bit."""
    n = 12
    prompts = {k: chat_ids(par, q) for k, q in zip("abc", QUESTIONS)}
    alone = {}
    for key, prompt in prompts.items():
        (r,) = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off").run([Request(key, prompt, n)])
        alone[key] = (r.tokens, r.text, r.finish_reason)
    dec = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off")
    for key in "ab":
        update = dec.admit(Request(key, prompts[key], n), interleave=True)
        assert update is not None and update.key == key and len(update.tokens) == 1
    assert not any(s.pending for s in dec.slots)
    results = {u.key: u.result for u in dec.step() if u.result is not None}  # a and b stream now
    assert dec.admit(Request("c", prompts["c"], n), interleave=True) is None  # c: a chunk per step
    while dec.active:
        results.update({u.key: u.result for u in dec.step() if u.result is not None})
    for key in "abc":
        r = results[key]
        assert (r.tokens, r.text, r.finish_reason) == alone[key], key


def test_chat_cuts_let_a_short_system_prompt_and_a_whole_earlier_turn_be_reused_exactly(par: Model) -> None:
    """Model.chat_cuts: a cut where each message's content starts. A system prompt of any
    length is taken from the slot that holds it, a chat's next turn
    takes the whole previous prompt, and each text is the one its prefill from an empty cache
    (with the same cuts) gives, bit for bit."""
    n = 10
    system = [{"role": "system", "content": "Answer in one short sentence."}]
    chats = [system + [{"role": "user", "content": q}] for q in QUESTIONS[:2]]
    prompts = [par.tokenize_chat(c) for c in chats]
    cuts = [par.chat_cuts(c, p) for c, p in zip(chats, prompts)]

    def text_from(prompt: list[int], at: int) -> str:
        return b"".join(par.backend.token_bytes(t) for t in prompt[at:]).decode()

    for chat, prompt, cut in zip(chats, prompts, cuts):
        starts = [text_from(prompt, c) for c in sorted(cut)]
        assert len(cut) == 2 and starts[0].startswith(system[0]["content"]), starts
        assert starts[1].startswith(chat[1]["content"]), starts
    assert cuts[0] == cuts[1]  # the same system prompt: its content and the user's start alike
    user_start = max(cuts[0])
    assert user_start % CPU_ROW_GROUP != 0  # inside a batch, reuse would stop short of it

    def alone(key: str, prompt: list[int], cut: frozenset[int]) -> Any:
        (r,) = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off").run([Request(key, prompt, n, cuts=cut)])
        return r

    refs = [alone(str(i), p, c) for i, (p, c) in enumerate(zip(prompts, cuts))]
    dec = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off")

    def finish(*reqs: Request) -> list[Any]:
        for req in reqs:  # admitted together: the second copies from the first's busy slot
            dec.admit(req)
        done = {}
        while dec.active:
            done.update({u.key: u.result for u in dec.step() if u.result is not None})
        return [done[r.key] for r in reqs]

    first, second = finish(Request("0", prompts[0], n, cuts=cuts[0]), Request("1", prompts[1], n, cuts=cuts[1]))
    assert first.reused_tokens == 0 and second.reused_tokens == user_start
    for got, ref in zip((first, second), refs):
        assert (got.tokens, got.text) == (ref.tokens, ref.text)
    turn = chats[0] + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Why?"}]
    prompt3 = par.tokenize_chat(turn)
    cut3 = par.chat_cuts(turn, prompt3)
    assert len(prompts[0]) in cut3  # the next turn's assistant message starts where the last prompt ended
    (third,) = finish(Request("2", prompt3, n, cuts=cut3))
    assert third.reused_tokens == len(prompts[0])
    ref3 = alone("2", prompt3, cut3)
    assert (third.tokens, third.text) == (ref3.tokens, ref3.text)


def test_a_chats_next_turn_tokenizes_only_its_new_messages_renderings(par: Model, monkeypatch: Any) -> None:
    """chat_cuts keeps each rendering's tokens by its text: the next turn of a chat tokenizes
    the renderings of its two new messages only, and finds the cuts it finds from nothing."""
    chat = [{"role": "system", "content": "Answer in one short sentence."}]
    for q in QUESTIONS[:3]:
        chat += [{"role": "user", "content": q}, {"role": "assistant", "content": f"About {q[:12]}."}]
    turn = [*chat[:-1], {"role": "user", "content": "And then?"}]  # 7 messages
    nxt = [*chat, {"role": "user", "content": "Why?"}]  # 8 messages: the first 6 shared with turn
    tokenized: list[str] = []
    tokenize = par._tokenize_rendered

    def counted(text: str) -> list[int]:
        tokenized.append(text)
        return tokenize(text)

    monkeypatch.setattr(par, "_head_tokens", type(par._head_tokens)())
    monkeypatch.setattr(par, "_tokenize_rendered", counted)
    par.chat_cuts(turn, par.tokenize_chat(turn))
    tokenized.clear()
    prompt = par.tokenize_chat(nxt)
    tokenized.clear()
    cuts = par.chat_cuts(nxt, prompt)
    assert len(tokenized) == 2  # the renderings before the 7th and 8th messages
    assert tokenized[0] == par.render_chat([*nxt[:6], {"role": "assistant", "content": ""}])
    monkeypatch.setattr(par, "_head_tokens", type(par._head_tokens)())
    assert par.chat_cuts(nxt, prompt) == cuts and len(cuts) == 8
    assert len(tokenized) == 2 + 8


def test_prefill_cuts_are_where_a_context_parts_from_another() -> None:
    a, b, c, d, e = [1, 2, 3, 4, 5], [1, 2, 3, 9], [1, 2, 7], [8], [1, 2, 3, 4, 5, 6]
    assert prefill_cuts([a, b, c, d, e]) == [{2, 3, 5}, {2, 3}, {2}, set(), {2, 3, 5}]
    assert prefill_cuts([a]) == [set()] and prefill_cuts([]) == []
    shared = [[7] * 10 + [i] for i in range(50)]  # one system prompt, 50 questions
    assert prefill_cuts(shared) == [{10}] * 50


@pytest.mark.parametrize("seed", range(4))
def test_prefill_cuts_equal_every_common_length_with_another(seed: int) -> None:
    rng = np.random.default_rng(seed)
    contexts = [rng.integers(0, 2, rng.integers(0, 12)).tolist() for _ in range(150)]
    for i, (a, cuts) in enumerate(zip(contexts, prefill_cuts(contexts))):
        common = {common_prefix_len(a, b) for j, b in enumerate(contexts) if j != i}
        assert cuts == {c for c in common if 0 < c <= len(a)}, a


def first_logits(dec: ParallelDecoder, slot: int, prompt: list[int], cuts: frozenset[int] = frozenset(),
                 reused: list[int] | None = None) -> np.ndarray:
    """The target's logits after the prompt, from the KV the slot's prefill left: its last
    position decoded again alone, on the KV of all the others. `reused` gets the tokens reused."""
    result = dec.admit(Request(slot, prompt, 1, cuts=cuts), dec.slots[slot]).result
    assert result is not None  # one token: done
    if reused is not None:
        reused.append(result.reused_tokens)
    dec.backend.seq_remove(slot, len(prompt) - 1)
    return dec.backend.decode_seqs(prompt[-1:], [len(prompt) - 1], [slot])[0]


def test_a_reused_prefix_gives_the_kv_of_a_prefill_from_an_empty_cache(par: Model) -> None:
    """Bitwise. llama.cpp's KV depends on how a prefill is cut into batches (measured 0.46
    logits apart on SmolLM2 on an AVX2 CPU), so a prefix is reused only as far as
    prefill_splits.reusable allows: here inside one batch, short of the shared length."""
    a, b = chat_ids(par, QUESTIONS[0]), chat_ids(par, QUESTIONS[1] + QUESTIONS[2] * 3)  # long
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    keep = reusable(shared, cuts=frozenset(), end=len(b), held_cuts=frozenset({len(a)}),
                    n_batch=par.backend.n_batch, rule=par.backend.split_rule)
    assert CPU_WHOLE_TILE <= keep < shared  # reused inside the batch, a partial group left to compute
    dec = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off")
    fresh = first_logits(dec, 0, b)
    dec = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off")
    first_logits(dec, 0, a)
    reused: list[int] = []
    reused_own = first_logits(dec, 0, b, reused=reused)  # slot 0's own previous prompt
    first_logits(dec, 0, a)
    reused_copy = first_logits(dec, 1, b, reused=reused)  # a copy of slot 0's stream
    assert reused == [keep, keep]
    assert np.array_equal(fresh, reused_own) and np.array_equal(fresh, reused_copy)


def test_a_short_shared_prefix_is_reused_at_the_cut_where_prompts_part(par: Model) -> None:
    """Off a row group's bound, the prompts of a run are cut where they part (prefill_cuts):
    a chat template's system prompt is then evaluated once and still reused exactly."""
    a = par.tokenize_chat([{"role": "user", "content": QUESTIONS[0]}])
    b = par.tokenize_chat([{"role": "user", "content": QUESTIONS[1]}])
    cut_a, cut_b = prefill_cuts([a, b])
    shared = common_prefix_len(a, b)
    assert 0 < shared < CPU_WHOLE_TILE and shared % CPU_ROW_GROUP and cut_a == cut_b == {shared}
    fresh = first_logits(ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off"), 0, b, cut_b)
    dec = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off")
    first_logits(dec, 0, a, cut_a)
    assert np.array_equal(fresh, first_logits(dec, 1, b, cut_b))
    assert dec.slots[1].kv[:shared] == b[:shared]
    # requests without cuts: reuse up to the last whole row group (both batches under a tile)
    fresh = first_logits(ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off"), 0, b)
    no_cuts = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off")
    first_logits(no_cuts, 0, a)
    reused: list[int] = []
    assert np.array_equal(fresh, first_logits(no_cuts, 1, b, reused=reused))
    assert reused == [shared - shared % CPU_ROW_GROUP]


def test_an_answer_does_not_depend_on_what_ran_before_it(par: Model) -> None:
    """What a resumed batch run needs: the same prompts in another order, on other slots and
    after another text, give the same tokens (greedy, no drafts)."""
    n = 24

    def run(keys: list) -> dict:
        dec = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off")
        reqs = [Request(k, chat_ids(par, QUESTIONS[k]) if isinstance(k, int) else par.tokenize_prompt(k), n)
                for k in keys]
        return {r.key: r for r in dec.run(reqs)}

    a = run([0, 1, 2, 3, 4])
    b = run(["An unrelated text first.", 4, 3, 2, 1, 0])
    assert a[0].reused_tokens == 0 and b[0].reused_tokens > 0  # another history for the same prompt
    assert {k: r.tokens for k, r in a.items()} == {k: r.tokens for k, r in b.items() if isinstance(k, int)}


def test_seeded_sampling_is_reproducible_per_prompt(par: Model) -> None:
    def run(order: list[int], seeds: dict[int, int], mode: str) -> dict[int, str]:
        dec = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode=mode)
        reqs = [Request(i, chat_ids(par, QUESTIONS[i]), 20, SamplingParams(temperature=0.9, seed=seeds[i]))
                for i in order]
        return {r.key: r.text for r in dec.run(reqs)}

    seeds = {i: 10 + i for i in range(4)}
    a = run([0, 1, 2, 3], seeds, "auto")
    b = run([3, 2, 1, 0], seeds, "lookup")  # another batch composition, other drafts
    assert a == b
    c = run([0, 1, 2, 3], {i: 99 + i for i in range(4)}, "auto")
    assert c != a  # the seed matters


def test_stop_strings_max_tokens_and_context_end(par: Model) -> None:
    dec = ParallelDecoder(par.backend, seq_ctx=40, mode="lookup")
    long_prompt = par.tokenize_prompt("one two three four five six seven eight nine ten " * 3)
    assert 30 < len(long_prompt) < 39
    reqs = [Request("stop", par.tokenize_prompt("Count: 1, 2, 3, 4,"), 30, stops=[" 7"]),
            Request("len", par.tokenize_prompt("Once upon a time"), 5),
            Request("ctx", long_prompt, 100)]
    out = {r.key: r for r in dec.run(reqs)}
    assert out["stop"].finish_reason == "stop" and " 7" not in out["stop"].text and " 6" in out["stop"].text
    assert out["len"].finish_reason == "length" and len(out["len"].tokens) == 5
    ctx = out["ctx"]
    assert ctx.finish_reason == "length" and len(long_prompt) + len(ctx.tokens) - 1 == 40
    with pytest.raises(ContextOverflowError):
        dec.check(Request("x", list(range(1, 41)), 4))
    with pytest.raises(InvalidRequestError):
        ParallelDecoder(par.backend, seq_ctx=40, mode="layerskip")


@pytest.mark.slow
def test_greedy_qwen_differs_from_decoding_alone_only_at_near_ties(qwen05: Path) -> None:
    """Q4_K_M kernels are not batch-invariant (notes: "llama.cpp is not batch-invariant"): a
    row decoded beside others may flip a near-tied argmax, never a clear one."""
    n = 24
    with Model(qwen05, n_ctx=SEQ_CTX, n_threads=2, cost_cache=False) as single, \
            Model(qwen05, n_ctx=SEQ_CTX * 3, n_threads=2, n_seq_max=3, cost_cache=False) as m:
        prompts = [chat_ids(m, q) for q in QUESTIONS[:3]]
        alone = [list(single.decoder.generate(p, max_tokens=n)) for p in prompts]
        dec = ParallelDecoder(m.backend, seq_ctx=SEQ_CTX, mode="lookup")
        together = {r.key: r.tokens for r in dec.run([Request(i, p, n) for i, p in enumerate(prompts)])}
        for i, (prompt, ref) in enumerate(zip(prompts, alone)):
            got = together[i]
            if got == ref:
                continue
            j = next(j for j, (a, b) in enumerate(zip(ref, got)) if a != b)
            single.backend.reset()
            top2 = np.sort(single.backend.decode(prompt + ref[:j], logits="last")[0])[-2:]
            assert top2[1] - top2[0] < 0.5, f"prompt {i} diverged at a margin of {top2[1] - top2[0]:.3f} logits"


def test_a_new_request_goes_to_the_free_slot_holding_its_prefix(par: Model) -> None:
    """A chat's next turn finds its conversation (the slot whose KV gives the most of it);
    a prompt no slot knows takes the least recently used slot, keeping the others' caches."""
    dec = ParallelDecoder(par.backend, seq_ctx=SEQ_CTX, mode="off")
    a = par.tokenize_prompt("You are a careful assistant. " * 20 + "First question?")
    b = par.tokenize_prompt("Notes from the lighthouse. " * 20 + "Second question?")
    assert dec.admit(Request("a", a, 1)).result is not None  # one token: done, the slot is free again
    assert dec.admit(Request("b", b, 1)).result is not None
    slot_a, slot_b = (next(s for s in dec.slots if s.kv[:len(p) - 1] == p[:-1]) for p in (a, b))
    assert slot_a is not slot_b
    turn = b + b[1:30]  # b's conversation, continued
    assert dec.pick(turn) is slot_b
    stranger = par.tokenize_prompt("Something else.")
    assert dec.pick(stranger) not in (slot_a, slot_b)  # the slot never used
    done = dec.admit(Request("turn", turn, 1)).result
    assert done is not None and done.reused_tokens >= 64 and done.reused_tokens % CPU_ROW_GROUP == 0
