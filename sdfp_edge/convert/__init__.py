"""The workstation half: score a full-precision model's layers with PyTorch, ship the skip list in its GGUF.

Imports torch and transformers lazily (the `convert` extra); it may use the runtime (through sdfp_edge.api) to measure a skip count.

    pipeline.py       convert / annotate: llama.cpp's converter and quantizer, then sdfp.* metadata
    fit.py            Fisher Information Trace and the other per-layer and per-block scores
    block_choice.py   which attention and MLP blocks a sub-layer draft leaves out
    calibration.py    the sequences the scores are computed on
    skip_count.py     how many layers to skip, measured through the runtime
"""
