"""`sdfp-edge bench`: side-by-side tokens/s on MT-Bench and HumanEval, in one process.

    data.py     prompts from the PyPI wheels that ship MT-Bench and HumanEval
    systems.py  the compared systems (sdfp modes, llama-cpp-python peers, layer-list baselines)
    runner.py   interleaved runs, machine and build record
    stats.py    paired ratios, acceptance, tokens per verify, memory-bound projection
    report.py   bench.json, bench.md, bench.png
"""
