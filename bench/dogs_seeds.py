"""The dog faces, whole `cpu`-preset runs on several seeds: validation and test MAP@5 of each model and of the blend,
what each model kept, the blend's weights, wall time. Rows merge into bench/results/dogs_seeds.json under `--tag`.

    python bench/dogs_seeds.py [--seeds 42,1,2] [--tag 'pooled twins and round'] [--set KEY=VALUE,..] [--jobs 1]
                               [--threads N] [--data ../shared/data/dogfaces] [--root /tmp/whale_dogs]

Each seed is `whale-kernel run --data DATA --out ROOT/seed<S> --seed S` (with `--set`: the `cpu` preset with those
fields). `--jobs 2 --threads 1` runs two seeds at once on one thread each: wall times are then
not a single run's, the scores are the same (no time budget). Test MAP@5 comes from the run's own scoring of
DATA/solution.csv, which nothing else reads.
"""
import argparse, json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from _util import meta, write, out_path, ROOT, cli_argv, sets_arg

def one(seed:int, a) -> dict:
    o = Path(a.root)/f'seed{seed}'; o.parent.mkdir(parents=True, exist_ok=True)
    args = ['--data', str(a.data), '--out', str(o), '--seed', str(seed)]
    cmd = cli_argv(['run'] + args, a.set)
    env = {**os.environ, **({'OMP_NUM_THREADS': str(a.threads)} if a.threads else {})}
    t = time.perf_counter()
    with open(o.parent/f'seed{seed}.log', 'w') as log: rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    r = dict(command=' '.join(['whale-kernel', 'run'] + args) + (f' with preset fields {a.set}' if a.set else ''), rc=rc,
             wall_s=round(time.perf_counter() - t, 1), threads=a.threads, jobs=a.jobs)
    sf = o/'summary.json'
    if sf.exists():
        s = json.loads(sf.read_text())
        r.update({k: s.get(k) for k in ('splits', 'n_valid', 'equalize', 'valid', 'test', 'kept', 'total_secs')})
        r['blend'] = {k: (s.get('blend') or {}).get(k) for k in ('weights', 'alpha', 'left_out')}
        from whale_kernel.ensemble import ModelScores        # each model's saved scores carry what it kept
        info = {f.name.split('_')[0]: ModelScores.load(f).info for f in sorted((o/'scores').glob('*.npz'))}
        r['extras'] = {m: {k: v.get(k) for k in ('rerank', 'pseudo', 'centres', 'pseudo_round', 'new_twins') if v.get(k)}
                       for m, v in info.items()} or None
    print(f"seed {seed}: rc {rc}, {r['wall_s']:.0f}s, test {r.get('test')}", flush=True)
    return r

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seeds', default='42,1,2'); ap.add_argument('--tag', default='')
    ap.add_argument('--set', type=sets_arg, default={})
    ap.add_argument('--jobs', type=int, default=1); ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--data', default=str(ROOT.parent/'shared'/'data'/'dogfaces')); ap.add_argument('--root', default='/tmp/whale_dogs')
    a = ap.parse_args(argv)
    if not (Path(a.data)/'train.csv').exists(): sys.exit(f'{a.data}: no dog faces here (train.csv missing)')
    seeds = [int(s) for s in a.seeds.split(',')]
    fn = out_path('dogs_seeds'); res = json.loads(fn.read_text()) if fn.exists() else {}
    with ThreadPoolExecutor(a.jobs) as ex: rows = dict(zip(seeds, ex.map(lambda s: one(s, a), seeds)))
    commit = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(['git', '-C', str(ROOT), 'status', '--porcelain', 'whale_kernel'], capture_output=True, text=True).stdout)
    for s, r in rows.items():
        r['code'] = commit + (' plus uncommitted changes to whale_kernel/' if dirty else '')
        res.setdefault('runs', {})[f'seed {s}' + (f', {a.tag}' if a.tag else '')] = r
    res.update({k: v for k, v in meta().items()})
    print(f'wrote {write("dogs_seeds", res)}')

if __name__ == '__main__': main()
