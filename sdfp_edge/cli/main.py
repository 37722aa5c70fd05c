"""The `sdfp-edge` command group: one subcommand per file of this package."""

from __future__ import annotations

import click

from sdfp_edge import __version__
from sdfp_edge.cli import bench, chat, convert, generate, models, serve
from sdfp_edge.cli.options import tolerant_stdio


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sdfp-edge")
def main() -> None:
    """Faster local LLM decoding with layer-skip drafts from the same GGUF, same output."""
    tolerant_stdio()


def _register() -> None:
    main.add_command(models.models)
    main.add_command(generate.generate)
    main.add_command(chat.chat)
    main.add_command(serve.serve)
    main.add_command(bench.bench)
    main.add_command(convert.convert)
    main.add_command(convert.inspect)


_register()
