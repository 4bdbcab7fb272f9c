"""Ensemble-level rules replayed offline on finished runs: each run dir keeps every model's `ModelScores` (validation
and test score matrices, calibration, threshold) in `scores/`, so a rule that only combines them (which members enter
the blend, its weights and α, the `new_whale` threshold) is judged on the test MAP@5 of many runs in seconds, without
training anything again. Test answers come from the run's `solution.csv` and are read only to score.

    python bench/blend_rules.py RUN_DIR [RUN_DIR ...] [--out NAME]

Rules: `blend` (the run's own: power-mean weights and α searched on validation), `knn` (the kNN alone), `gate z`
(members whose paired per-photo gain over the kNN on validation is under z standard errors left out, the rest blended
as `blend` does), `gate z, equal` (the same, equal weights and α 1 when validation has fewer than 100 known photos),
`… shrunk n0` (the threshold pulled towards the leaderboard's 27.6 % rule by n0 / (n_known + n0)).
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

def _aps(m):
    from whale_kernel.metrics import query_aps
    return query_aps(m.pv, m.valid.ids, m.truth, m.thr)

def gate(ms:dict, z:float, base:str='knn') -> list:
    "The members whose paired validation gain over `base` beats `z` standard errors, `base` always in"
    from whale_kernel.train import beats
    if base not in ms: return list(ms.values())
    b = _aps(ms[base])
    return [m for k,m in ms.items() if k == base or beats(_aps(m), b, z)[0]]

def shrink(ens, n0:float):
    "`ens` with its threshold pulled towards the 27.6 % rule on its test scores by n0 / (n_known + n0)"
    from whale_kernel.metrics import ratio_threshold
    import dataclasses
    n = int(np.isin(np.asarray(ens.truth, dtype=object), ens.valid.ids).sum()); w = n0/(n + n0)
    return dataclasses.replace(ens, thr=(1 - w)*ens.thr + w*ratio_threshold(ens.pt))

def rules():
    from whale_kernel.ensemble import blend
    def gated(z, equal=False, n0=None):
        def f(ms):
            sel = gate(ms, z); n = int(np.isin(np.asarray(sel[0].truth, dtype=object), sel[0].valid.ids).sum())
            ens = blend(sel, weights=[1.]*len(sel), alpha=1.) if equal and n < 100 and len(sel) > 1 else blend(sel)
            return shrink(ens, n0) if n0 else ens
        return f
    out = {'blend': lambda ms: blend(list(ms.values())), 'knn': lambda ms: ms['knn']}
    for z in (0.5, 1., 2.): out[f'gate {z:g}'] = gated(z)
    for z in (1., 2.): out[f'gate {z:g}, equal'] = gated(z, True)
    for n0 in (10, 30): out[f'gate 1, shrunk {n0}'] = gated(1., n0=n0)
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
