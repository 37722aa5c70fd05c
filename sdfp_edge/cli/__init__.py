"""The `sdfp-edge` command line.

One file per command; `main.py` groups them (the `sdfp-edge` entry point), `options.py`
holds what they share. Every error a user can cause is an `SdfpError`: it is printed as one
line, `error: ...`, with exit code 2 and no traceback.

Text that is not UTF-8 (a prompt in the arguments, on stdin, or typed in `chat`) is taken as
the bytes it is, as llama.cpp's own CLI does: Python keeps such bytes as surrogate escapes,
the backend gives them to the tokenizer unchanged (which reads each as U+FFFD), and a note
names them.
"""
