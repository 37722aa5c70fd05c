#!/usr/bin/env python3
"""Does speculation still pay under a JSON schema? Plain vs auto on an extraction prompt.

Figures: docs/server.md: 'speculation still pays under a schema' (auto 1.22x of off on
Qwen2.5-Coder-0.5B).

Each mode runs in its own process (sdfp-edge `Model`, learning its costs from scratch and
leaving the user's cost cache untouched), greedy, the
schema's grammar constraining every verified position; rounds alternate the order. Prints
end-to-end tokens/s per run, the median ratio auto / off, and whether every output parses
and matches the schema.

    .venv/bin/python tools/json_extraction_speed.py --model qwen2.5-coder-1.5b --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from sdfp_edge.paths import env_without_stored_costs

SCHEMA = {"type": "object", "properties": {"people": {"type": "array", "items": {
    "type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"},
                                     "year": {"type": ["integer", "null"]}},
    "required": ["name", "city", "year"]}}}, "required": ["people"]}
TEXT = ("Alice Martin moved from Lyon to Paris in 2019. Bob Chen has lived in Toronto since 2004. "
        "Carla Diaz works in Madrid, and her brother Dan Diaz moved to Seville in 2021. "
        "Eve Novak left Prague for Vienna in 2015; Frank Ito stayed in Osaka.")
PROMPT = f"Extract every person, the city they live in now, and the year they moved there (null if not given), as JSON.\n\n{TEXT}"

RUN = r"""
import json, sys, time
from sdfp_edge.api import Model
from sdfp_edge.runtime.grammar import json_schema_gbnf
model, mode, n, schema, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
with Model(model, n_ctx=2048) as m:
    t0 = time.perf_counter()
    out = m.chat([{"role": "user", "content": prompt}], max_tokens=n, mode=mode, grammar=json_schema_gbnf(schema), temperature=0)
    dt = time.perf_counter() - t0
    s = m.last_stats
    print(json.dumps({"text": out.text, "tokens": s["tokens"], "seconds": dt, "accepted": s["accepted"],
                      "drafted": s["drafted"], "tokens_per_verify": s["tokens_per_verify"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=256)
    args = ap.parse_args()
    import jsonschema

    rates: dict[str, list[float]] = {"off": [], "auto": []}
    ratios = []
    for r in range(args.rounds):
        got = {}
        for mode in (["off", "auto"] if r % 2 == 0 else ["auto", "off"]):
            out = subprocess.run([sys.executable, "-c", RUN, args.model, mode, str(args.n), json.dumps(SCHEMA), PROMPT],
                                 capture_output=True, text=True, check=True,
                                 env=env_without_stored_costs())  # the user's cost cache untouched
            res = json.loads(out.stdout.strip().splitlines()[-1])
            jsonschema.validate(json.loads(res["text"]), SCHEMA)  # raises if it does not match
            got[mode] = res
            rates[mode].append(res["tokens"] / res["seconds"])
            print(f"round {r} {mode:>4}: {res['tokens']} tokens, {rates[mode][-1]:.2f} tok/s end to end, "
                  f"{res['accepted']}/{res['drafted']} drafts accepted, {res['tokens_per_verify']:.2f} tokens/verify")
        ratios.append(rates["auto"][-1] / rates["off"][-1])
        print(f"round {r}: same text: {got['off']['text'] == got['auto']['text']}")
    print(f"auto / off, end to end: median {statistics.median(ratios):.2f}x (runs {', '.join(f'{x:.2f}' for x in ratios)});"
          " every output parsed and matched the schema")


if __name__ == "__main__":
    main()
