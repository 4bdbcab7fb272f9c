"""Ensemble-level rules replayed offline on finished runs: each run dir keeps every model's `ModelScores` (validation
and test score matrices, calibration, threshold) in `scores/`, so a rule that only combines them (which members enter
the blend, its weights and α, the `new_whale` threshold) is judged on the test MAP@5 of many runs in seconds, without
training anything again. Test answers come from the run's `solution.csv` and are read only to score.

    python bench/blend_rules.py RUN_DIR [RUN_DIR ...] [--out NAME]

Rules: `knn` (the kNN alone), `arcface` (the ArcFace alone), `all members` (every member in the power-mean blend, weights and α searched on
validation), `gate z` (`pipeline.blend_members`: members whose paired per-photo gain over the kNN on validation is
under z standard errors left out), `… prior n0` (the blend's threshold moved towards the leaderboard's 27.6 % rule by
n0 / (n + n0), `ensemble.shrunk`). The members' own thresholds are the run's.
Writes bench/results/<NAME>.json and prints a table: mean test MAP@5 per rule, and the worst draw against the kNN.
"""
import argparse, json, sys
from pathlib import Path
import numpy as np, pandas as pd
from _util import meta, write

def load_run(d:Path):
    "The run's `ModelScores` by model name, and the test answers in the run's order"
    from whale_kernel.ensemble import ModelScores
    s = json.loads((d/'summary.json').read_text())
    ms = {}
    for f in sorted((d/'scores').glob('*.npz')):
        if f.stem.endswith('.tmp'): continue
        m = ModelScores.load(f); ms[m.name] = m
    sol = pd.read_csv(Path(s['data'])/'solution.csv').set_index('Image').Id
    truth = sol[list(next(iter(ms.values())).test.names)].values
    return ms, truth

def rules():
    "Each rule: the run's members (by name) -> the blend it submits"
    from whale_kernel.ensemble import blend
    from whale_kernel.pipeline import blend_members
    out = {'knn': lambda ms: ms['knn'], 'arcface': lambda ms: ms['arcface'], 'all members': lambda ms: blend(list(ms.values()))}
    for z in (0., 0.5, 1., 2.): out[f'gate {z:g}'] = lambda ms, z=z: blend_members(list(ms.values()), z)
    for n0 in (10, 30, 100): out[f'gate 1, prior {n0}'] = lambda ms, n0=n0: blend_members(list(ms.values()), 1., n0)
    out['gate 0, prior 30'] = lambda ms: blend_members(list(ms.values()), 0., 30.)       # the run's default
    out['all members, prior 30'] = lambda ms: blend(list(ms.values()), prior=30.)
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('runs', nargs='+'); ap.add_argument('--out', default='blend_rules')
    a = ap.parse_args(argv)
    from whale_kernel.metrics import predict_top5, map5
    res = {}
    for d in map(Path, a.runs):
        if not (d/'summary.json').exists(): print(f'{d}: no summary.json, skipped', file=sys.stderr); continue
        ms, truth = load_run(d)
        res[str(d)] = {k: round(map5(predict_top5((e := f(ms)).pt, e.test.ids, e.thr), list(truth)), 4) for k,f in rules().items()}
        print(d, res[str(d)], flush=True)
    keys = list(rules())
    mean = {k: round(float(np.mean([r[k] for r in res.values()])), 4) for k in keys}
    worst = {k: round(float(min(r[k] - r['knn'] for r in res.values())), 4) for k in keys}
    print('\n| rule | mean test MAP@5 | worst run against the kNN |\n|---|---|---|')
    for k in keys: print(f'| {k} | {mean[k]:.4f} | {worst[k]:+.4f} |')
    write(a.out, {**meta(), 'runs': res, 'mean': mean, 'worst_vs_knn': worst})

if __name__ == '__main__': main()
