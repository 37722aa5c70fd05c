"""The OpenAI-compatible HTTP server (`sdfp-edge serve`).

It needs the `server` extra (fastapi, uvicorn); only app.py and the modules it uses import
them, so `settings` stays importable (the CLI reads it) without the extra installed.
`create_app` lives in app.py; this file imports nothing.

    settings.py   what a server is configured with
    schemas.py    request bodies, validated
    formats.py    response_format: JSON output as a grammar
    tools.py      tool definitions, tool calls parsed out of the reply
    responses.py  response bodies and SSE framing
    streams.py    the chunks of a streamed response, in order
    errors.py     OpenAI-style error JSON and the handlers that produce it
    auth.py       the API-key check
    cors.py       which browser origins may call the server
    runner.py     one model, one worker thread, a FIFO of jobs
    slots.py      --parallel N: the same jobs, N of them decoded together (runtime/parallel.py)
    app.py        create_app(settings, model): the routes
"""
