"""The laptop half: llama.cpp with layer skipping, the speculative loop, drafters and samplers.

Needs the patched llama-cpp-python build (tools/build_runtime.py), never PyTorch; nothing here imports sdfp_edge.convert.

    backend.py, layer_skip.py    the one llama.cpp context and the patch's C functions
    context_memory.py            what a context costs in memory, read before llama.cpp allocates it
    engine.py, parallel.py       the speculative loop: one sequence, or several in one context
    prefill_splits.py            where a prefill may be split or reused with its KV unchanged
    drafters/                    proposals: layer-skip, prompt lookup, a draft model
    controller.py, cost_store.py which draft pays on this machine, remembered across runs
    verify.py, sampling.py       exact acceptance, greedy and sampled
    sampler_chain.py, dry.py     llama.cpp's sampler chain, its defaults and DRY
    grammar.py, logits_processors.py, draft_vocab.py, batchio.py
"""
