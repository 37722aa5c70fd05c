"""`sdfp-edge bench`: end-to-end tokens/s against plain llama.cpp on MT-Bench and HumanEval,
each system in its own process.

    data.py         prompts from the PyPI wheels that ship MT-Bench and HumanEval
    systems.py      the compared systems (sdfp modes, llama-cpp-python and llama-server peers, controls)
    protocol.py     what the coordinator and the system processes exchange
    worker.py       one sdfp or llama-cpp-python system in its own process
    processes.py    the coordinator's handle on a worker process
    llama_server.py llama.cpp's own server as a system (binary built by tools/build_llama_server.py)
    runner.py       the coordinator: interleaved runs, machine and build record
    stats.py        paired ratios, acceptance, tokens per verify, memory-bound projection
    report.py       bench.json, bench.md, bench.png
"""
