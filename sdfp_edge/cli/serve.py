"""`sdfp-edge serve`: the OpenAI-compatible HTTP server (needs the `server` extra)."""

from __future__ import annotations

import ipaddress
import logging
import socket

import click
from click.core import ParameterSource

from sdfp_edge.cli.options import model_options, user_errors
from sdfp_edge.cli.generate import open_model, speculation_options
from sdfp_edge.errors import InvalidRequestError
from sdfp_edge.server.settings import API_KEY_ENV, Settings


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _log_to_stderr() -> None:
    """Our per-request lines, formatted like uvicorn's own."""
    logger = logging.getLogger("sdfp_edge.server")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def check_parallel(parallel: int, mode: str, draft_model: str | None, skip_layers: str | None,
                   ctx_size: int) -> None:
    """What --parallel N > 1 cannot do, refused before the model loads."""
    if parallel == 1:
        return
    from sdfp_edge.runtime.parallel import PARALLEL_MODES

    if mode not in PARALLEL_MODES:
        raise InvalidRequestError(
            f"--mode {mode} is not available with --parallel {parallel} (parallel slots draft with prompt lookup "
            f"only: a layer-skip draft needs its layer mask for the whole batch); use {', '.join(PARALLEL_MODES)}")
    for name, value in (("--draft-model", draft_model), ("--skip-layers", skip_layers)):
        if value is not None:
            raise InvalidRequestError(f"{name} is not available with --parallel {parallel} "
                                      "(parallel slots draft with prompt lookup only)")
    if ctx_size // parallel < 2:
        raise InvalidRequestError(f"--ctx-size {ctx_size} leaves no room for {parallel} slots")


@click.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback: only this machine can connect).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="TCP port.")
@click.option("--api-key", envvar=API_KEY_ENV, default=None, show_envvar=True,
              help="Refuse requests without `Authorization: Bearer KEY` (/health stays open).")
@click.option("--alias", default=None, metavar="NAME",
              help="The model id clients send (default: the GGUF's file name without .gguf).")
@click.option("--strict-model", is_flag=True,
              help="Refuse (404) requests whose `model` is not the served id (default: answer them).")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="A browser origin allowed to call the server, e.g. https://app.example "
                   "(repeatable; '*': any). Pages on localhost / 127.0.0.1 are always allowed.")
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Requests decoded together, in one batch per step (each gets --ctx-size / N tokens of "
                   "context); more wait in arrival order. 1: one request at a time.")
@click.option("--interleave-prefill/--whole-prefill", default=True, show_default=True,
              help="With --parallel > 1: prefill a prompt that arrives while others stream one chunk (64 tokens on a CPU) "
                   "per step between their tokens, or whole at once (the others wait for all of it).")
@speculation_options
@user_errors
@click.pass_context
def serve(ctx: click.Context, model: str | None, threads: int | None, ctx_size: int, n_gpu_layers: int | None,
          seed: int, verbose: bool, host: str, port: int, api_key: str | None, alias: str | None,
          strict_model: bool, cors_origins: tuple[str, ...], mode: str, draft_model: str | None,
          skip_layers: str | None, draft_max: int, draft_p_min: float, parallel: int,
          interleave_prefill: bool) -> None:
    """Serve the model with an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models).

    Requests that send no `seed` get a random one, unless --seed is given."""
    try:
        import uvicorn

        from sdfp_edge.server.app import create_app
        from sdfp_edge.server.cors import check_origins
    except ImportError as e:
        raise click.ClickException(f"the server needs its extra dependencies ({e}): "
                                   "pip install 'sdfp-edge[server]'") from None
    check_parallel(parallel, mode, draft_model, skip_layers, ctx_size)
    seed_given = ctx.get_parameter_source("seed") not in (ParameterSource.DEFAULT, None)
    settings = Settings(host=host, port=port, api_key=api_key or None, model=model, model_alias=alias,
                        strict_model=strict_model, cors_origins=check_origins(cors_origins), n_ctx=ctx_size,
                        threads=threads, n_gpu_layers=n_gpu_layers, mode=mode,
                        seed=seed if seed_given else None, draft_model=draft_model, skip_layers=skip_layers,
                        draft_max=draft_max, draft_p_min=draft_p_min, verbose=verbose, parallel=parallel,
                        interleave_prefill=interleave_prefill)
    if not is_loopback(host) and not settings.api_key:
        click.echo(f"warning: listening on {host} without --api-key: anyone who can reach "
                   f"{socket.gethostname()}:{port} can use the model", err=True)
    m = open_model(settings.model, settings.threads, settings.n_ctx, settings.n_gpu_layers, verbose,
                   settings.mode, settings.draft_model, settings.skip_layers, settings.draft_max,
                   settings.draft_p_min, n_seq_max=parallel)
    app = create_app(settings, m)
    _log_to_stderr()
    origins = ", ".join(("localhost", *settings.cors_origins))
    slots = f", {parallel} parallel slots of {m.backend.n_ctx // parallel} tokens" if parallel > 1 else ""
    click.echo(f"serving '{app.state.model_id}' at http://{host}:{port}/v1 (mode {mode}{slots}"
               f"{', API key required' if settings.api_key else ''}; browser origins: {origins})", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info" if not verbose else "debug",
                    timeout_graceful_shutdown=5)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on: a normal end
        pass
    finally:
        if app.state.runner.stopped:  # else a generation still runs on it; the process is ending anyway
            m.close()
