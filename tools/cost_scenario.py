"""Issue 36's scenario for one checkout of sdfp-edge: `python tools/cost_scenario.py SRC LABEL OUT.json`
(SRC: the checkout to run, put first on PYTHONPATH; a checkout without SDFP_EDGE_COST_DIR
(before issue 36) gets an SDFP_EDGE_CACHE of its own whose other entries link to the user's
cache; SDFP_EDGE_EXE: the sdfp-edge executable, default the one on PATH). Run it under the
exclusive CPU lock: it reports tok/s. docs/costs.md has the results.
States (3 runs each, the cost store carried from run to run within a state):
  fresh      empty store before each run
  issue      the issue's contended curve written into the store once (t1 12.3 ms, t(2) 47.8, t(8) 127), then 3 runs
  dear       a dear curve no ratio check rejects (V(n) = 1.2 n, n = 2..33) written once, then 3 runs
  busy       2 runs while two `yes > /dev/null` loops keep both cores busy, on the store the last fresh run left
  after-busy 3 quiet runs on the store those left
(order: fresh, busy, after-busy, issue, dear)
"""
import glob, json, os, shutil, subprocess, sys, tempfile, time
src, version, out = sys.argv[1], sys.argv[2], sys.argv[3]
CMD = [os.environ.get("SDFP_EDGE_EXE", "sdfp-edge"), "generate", "--chat", "-p", "Write a haiku about rain.", "-n", "256",
       "--temperature", "0", "--mode", "auto", "--json"]
root = tempfile.mkdtemp(prefix=f"i36-{version}-")
env = dict(os.environ, PYTHONPATH=src)
env.pop("SDFP_EDGE_COST_DIR", None)
user_cache = os.path.expanduser("~/.cache/sdfp-edge")
if "SDFP_EDGE_COST_DIR" not in open(os.path.join(src, "sdfp_edge", "paths.py")).read():  # before issue 36: a cache of its own, the rest linked to the user's
    cache = os.path.join(root, "cache")
    os.makedirs(cache)
    for name in os.listdir(user_cache):
        if name != "costs":
            os.symlink(os.path.join(user_cache, name), os.path.join(cache, name))
    env["SDFP_EDGE_CACHE"] = cache
    costdir = os.path.join(cache, "costs")
else:
    costdir = os.path.join(root, "costs")
    env["SDFP_EDGE_COST_DIR"] = costdir


def run(state):
    t0 = time.time()
    p = subprocess.run(CMD, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr)
    s = json.loads(p.stdout)["stats"]
    row = {"state": state, "tok_s": round(s["tokens_per_second"], 1), "tokens": s["tokens"], "drafted": s["drafted"],
           "accepted": s["accepted"], "explored": s.get("explored"), "V": {k: round(v, 2) for k, v in s["cost_model"].get("V", {}).items()},
           "t_token_ms": round(s["cost_model"].get("t_token_ms", 0), 2), "source": s["cost_model_source"][:9],
           "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(row), flush=True)
    return row


def write_curve(curve):
    files = glob.glob(f"{costdir}/*.json")
    assert files, "no cost file to rewrite"
    for p in files:
        doc = json.load(open(p))
        c, now = doc["state"]["cost"], time.time()
        if doc["schema"].endswith("/2"):
            c["t_verify"] = {str(n): v for n, v in curve.items()}
            c["samples"] = {str(n): 10 for n in curve}
        else:
            t1 = curve[1]
            c.update({"t_token": t1, "V": {str(n): v / t1 for n, v in curve.items() if n > 1},
                      "weight": {str(n): 16.0 for n in curve if n > 1}, "at": {str(n): now for n in curve if n > 1},
                      "floor": t1, "floor_at": now})
            doc["state"]["saved_at"] = now
        json.dump(doc, open(p, "w"))


rows = []
for i in range(3):
    shutil.rmtree(costdir, ignore_errors=True)
    rows.append(run("fresh"))
busy = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(2)]
try:
    for i in range(2):
        rows.append(run("busy"))
finally:
    for b in busy:
        b.kill()
        b.wait()
time.sleep(2)
for i in range(3):
    rows.append(run("after-busy"))
for state, curve in (("issue", {1: 0.0123, 2: 0.0478, 8: 0.127}),
                     ("dear", {1: 0.0123, **{n: 1.2 * n * 0.0123 for n in range(2, 34)}})):
    write_curve(curve)
    for i in range(3):
        rows.append(run(state))
json.dump({"version": version, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cmd": CMD, "rows": rows},
          open(out, "w"), indent=1)
shutil.rmtree(root)
