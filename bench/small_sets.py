"""Small real sets: random draws from the dog faces, each a competition of about 100 train and 80 test photos, run
through the whole `cpu`-preset pipeline; test MAP@5 of each model and of the blend per draw, against the draw's own
`solution.csv` (which only scoring reads).

    python bench/small_sets.py [--draws 10] [--dogs 40] [--new 15] [--seed 0] [--data ../shared/data/dogfaces]
                               [--models knn,arcface,siamese] [--tag NAME] [--set KEY=VALUE ...]

A draw: `--dogs` dogs with two or more train photos (all their train and test photos), `--new` of the train
`new_whale` photos, and test `new_whale` photos to the leaderboard's 27.6 %. Its validation split is what the run makes
of it (one photo of half the dogs held out, about 20 known photos), the regime where a choice made on one split is a
choice made on noise. Writes bench/results/small_sets[_TAG].json and a markdown table in bench/results/small_sets.md.
"""
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd
from _util import meta, write, TMP, RES, cli_argv

def _link(a, b):
    try: os.link(a, b)                 # the photos are read-only here: a hard link is a copy for free
    except OSError: shutil.copy(a, b)

def draw(src:Path, out:Path, seed:int, dogs:int=40, new:int=15, new_share:float=.276) -> dict:
    "Write draw `seed` of competition `src` to `out`: `dogs` whales with ≥ 2 train photos, `new` train new_whale photos"
    rng = np.random.default_rng(seed)
    tr, sol = pd.read_csv(src/'train.csv'), pd.read_csv(src/'solution.csv')
    vc = tr.Id[tr.Id != 'new_whale'].value_counts()
    pick = set(rng.choice(sorted(vc.index[vc >= 2]), dogs, replace=False))
    trd = pd.concat([tr[tr.Id.isin(pick)], tr[tr.Id == 'new_whale'].sample(new, random_state=seed)])
    known = sol[sol.Id.isin(pick)]
    n_new = round(len(known)*new_share/(1 - new_share))
    ted = pd.concat([known, sol[sol.Id == 'new_whale'].sample(n_new, random_state=seed)]).sample(frac=1, random_state=seed)
    if out.exists(): shutil.rmtree(out)
    for s in ('train', 'test'): (out/s).mkdir(parents=True)
    for df, s in ((trd, 'train'), (ted, 'test')):
        for im in df.Image: _link(src/s/im, out/s/im)
    trd.sort_values('Image').to_csv(out/'train.csv', index=False)
    ted.sort_values('Image').to_csv(out/'solution.csv', index=False)
    ted.assign(Id='new_whale').sort_values('Image').to_csv(out/'sample_submission.csv', index=False)
    return dict(train=len(trd), n_test=len(ted), dogs=dogs, test_new=int((ted.Id == 'new_whale').sum()))

def run_one(data:Path, out:Path, models:str, sets:list) -> dict:
    "`whale-kernel run` on `data` (the cpu preset, with `sets` overriding its fields); its summary, wall time and log"
    t = time.perf_counter()
    with open(out.parent/f'{out.name}.log', 'w') as f:
        r = subprocess.run(cli_argv(['run', '--data', data, '--out', out, '--models', models], dict(sets)), stdout=f, stderr=subprocess.STDOUT)
    s = json.loads((out/'summary.json').read_text()) if (out/'summary.json').exists() else {}
    return dict(rc=r.returncode, wall_s=round(time.perf_counter() - t, 1), n_valid=s.get('n_valid'), valid=s.get('valid'),
                test=s.get('test'), blend=s.get('blend'), kept=s.get('kept'))

def _value(v:str):
    try: return json.loads(v)
    except ValueError: return v

def table(res:dict) -> str:
    "A markdown table: one row per draw, test MAP@5 per model and the blend, the blend's margin over the kNN; then the means"
    rows, names = res['draws'], ['knn', 'arcface', 'siamese', 'blend']
    out = [f"| draw | train / test (valid) | {' | '.join(names)} | blend − kNN |", '|' + '---|'*(len(names) + 3)]
    for k,r in rows.items():
        t = r.get('test') or {}
        d = f"{t['blend'] - t['knn']:+.3f}" if 'blend' in t and 'knn' in t else '–'
        out.append(f"| {k} | {r['train']} / {r.get('n_test', '–')} ({r.get('n_valid')}) | " +
                   ' | '.join(f"{t[n]:.3f}" if n in t else '–' for n in names) + f' | {d} |')
    mean = lambda n: np.mean([r['test'][n] for r in rows.values() if r.get('test') and n in r['test']])
    out.append('| mean | | ' + ' | '.join(f'{mean(n):.3f}' for n in names) + f" | {mean('blend') - mean('knn'):+.3f} |")
    return '\n'.join(out)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default=str(Path(__file__).resolve().parents[2]/'shared'/'data'/'dogfaces'))
    ap.add_argument('--draws', type=int, default=10); ap.add_argument('--dogs', type=int, default=40)
    ap.add_argument('--new', type=int, default=15); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--models', default='knn,arcface,siamese'); ap.add_argument('--tag', default='')
    ap.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE', help='cpu preset overrides (JSON values)')
    a = ap.parse_args(argv)
    src, root = Path(a.data), TMP/'small_sets'
    sets = [(k, _value(v)) for k,v in (kv.split('=', 1) for kv in a.set)]
    name = 'small_sets' + (f'_{a.tag}' if a.tag else '')
    res = dict(data=str(src), dogs=a.dogs, new=a.new, models=a.models, sets=dict(sets), draws={},
               command=' '.join(['python bench/small_sets.py'] + (argv if argv is not None else sys.argv[1:])))
    for i in range(a.draws):
        d = root/f'draw{a.seed + i}'
        info = draw(src, d/'data', a.seed + i, a.dogs, a.new)
        r = run_one(d/'data', d/f'out{a.tag}', a.models, sets)
        res['draws'][f'draw{a.seed + i}'] = {**info, **r}
        print(f"draw {a.seed + i}: {info['train']} train, {info['n_test']} test, {r['wall_s']:.0f}s, test {r['test']}", flush=True)
        write(name, {**meta(), **res})
    md = RES/'small_sets.md'; txt = md.read_text() if md.exists() else '# Small real sets: draws from the dog faces\n'
    head = f"\n## {name} ({meta()['date'][:10]}, {meta()['device']})\n\n`{res['command']}`\n\n"
    md.write_text(txt + head + table(res) + '\n')
    return res

if __name__ == '__main__': main()
