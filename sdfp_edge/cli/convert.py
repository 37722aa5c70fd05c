"""`sdfp-edge convert` (workstation: FIT scores into the GGUF) and `sdfp-edge inspect`."""

from __future__ import annotations

from pathlib import Path

import click

from sdfp_edge.cli.options import user_errors
from sdfp_edge.convert.pipeline import METHODS, QUANT_TYPES


@click.command()
@click.argument("hf_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The GGUF to write (atomically; never the input).")
@click.option("--gguf", "gguf_in", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Annotate this existing GGUF of the same model instead of converting HF_DIR.")
@click.option("--quant", type=click.Choice(QUANT_TYPES, case_sensitive=False), default="Q8_0", show_default=True,
              help="llama.cpp quantization of the converted file (ignored with --gguf).")
@click.option("--method", type=click.Choice(METHODS), default="fit", show_default=True,
              help="Layer score: FIT (SDFP), gate Fisher, or ShortGPT's block influence.")
@click.option("--skip", "n_skip", type=int, default=None, help="Layers to skip (default: measured, see docs/convert.md).")
@click.option("--skip-ratio", type=float, default=None, help="Fraction of the layers to skip.")
@click.option("--samples", "n_samples", type=int, default=8, show_default=True, help="Calibration sequences.")
@click.option("--seq-len", type=int, default=128, show_default=True, help="Tokens per calibration sequence.")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Text or JSONL calibration file (default: the model's own answers to built-in prompts).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or mps.")
@click.option("-s", "--seed", type=int, default=0, show_default=True)
@user_errors
def convert(hf_dir: Path, out: Path, gguf_in: Path | None, quant: str, method: str, n_skip: int | None,
            skip_ratio: float | None, n_samples: int, seq_len: int, calibration_file: Path | None,
            device: str, seed: int) -> None:
    """Score HF_DIR's decoder layers and write a GGUF whose metadata carries the skip list."""
    from sdfp_edge.convert import pipeline

    meta = pipeline.convert(hf_dir, out, gguf_in=gguf_in, quant=quant.upper(), method=method, n_skip=n_skip,
                            skip_ratio=skip_ratio, n_samples=n_samples, seq_len=seq_len,
                            calibration_file=calibration_file, device=device, seed=seed, progress=True)
    click.echo(f"{out}: skip layers {list(meta.skip_layers)} of {meta.n_layer} ({meta.score_method})")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the per-layer scores (skipped layers marked) to this PNG.")
@user_errors
def inspect(model: Path, plot: Path | None) -> None:
    """Print a GGUF's sdfp metadata and its layers ranked by score."""
    from sdfp_edge.convert import pipeline
    from sdfp_edge.errors import SkipListError
    from sdfp_edge.metadata import read_skip_metadata

    click.echo(pipeline.inspect(model))
    if plot is not None:
        meta = read_skip_metadata(model)
        if meta is None:
            raise SkipListError(f"{model} has no sdfp metadata to plot")
        click.echo(f"wrote {pipeline.plot_scores(meta, plot)}")
