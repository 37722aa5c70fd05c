"""What a server instance is configured with: where it listens, who may call it, which model.

`sdfp-edge serve` fills this from its options; tests and desktop apps may build it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "SDFP_EDGE_API_KEY"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"  # loopback by default: nothing outside this machine can connect
    port: int = 8080
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer KEY`
    model: str | None = None  # GGUF path or catalogue name (None: the default model)
    model_alias: str | None = None  # the id clients send as `model` (default: the GGUF's file name stem)
    strict_model: bool = False  # refuse (404) a request naming another model, instead of answering it
    cors_origins: tuple[str, ...] = ()  # browser origins allowed besides localhost's; "*": any
    n_ctx: int = 4096
    threads: int | None = None
    n_gpu_layers: int | None = None
    mode: str = "auto"  # speculation mode for requests that do not send `sdfp_mode`
    seed: int | None = None  # seed for requests that do not send one (None: a fresh random seed each)
    draft_model: str | None = None
    skip_layers: str | None = None  # "3,5,7": overrides the GGUF's sdfp.* skip list
    draft_max: int = 4
    draft_p_min: float = 0.8
    verbose: bool = False
    parallel: int = 1  # requests decoded together (server/slots.py); 1: one at a time (runner.py)
    interleave_prefill: bool = True  # parallel > 1: a new prompt's prefill goes one chunk per step

    def model_id(self, model_path: str | Path) -> str:
        """The one model id this server answers to."""
        return self.model_alias or Path(model_path).stem
