"""The `sdfp-edge` command group: one subcommand per file of this package."""

from __future__ import annotations

import os

import click

from sdfp_edge import __version__
from sdfp_edge.cli import bench, chat, convert, costs, generate, models, serve
from sdfp_edge.cli.options import tolerant_stdio
from sdfp_edge.paths import NO_STORED_COSTS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sdfp-edge")
@click.option("--no-stored-costs", is_flag=True,
              help="Neither use nor keep what auto measured in earlier runs (as SDFP_EDGE_NO_STORED_COSTS=1; "
                   "see `sdfp-edge costs`).")
def main(no_stored_costs: bool) -> None:
    """Faster local LLM decoding with layer-skip drafts from the same GGUF, same output."""
    tolerant_stdio()
    if no_stored_costs:
        os.environ[NO_STORED_COSTS] = "1"  # read where a cost store opens, here and in workers


def _register() -> None:
    main.add_command(models.models)
    main.add_command(generate.generate)
    main.add_command(chat.chat)
    main.add_command(serve.serve)
    main.add_command(bench.bench)
    main.add_command(convert.convert)
    main.add_command(convert.inspect)
    main.add_command(costs.costs)


_register()
