"""The README's main command, timed: `whale-kernel run --out DIR [EXTRA ...]` (the embedded demo: the synthetic default,
the `cpu` preset, all three models) from an empty output folder, `--runs` times in a row. Per run: wall
seconds of the whole command (Python start-up and writing the synthetic competition included), the test MAP@5 of each
model and of the blend, the log's line count, the load average before. Writes bench/results/default_run.json.

    python bench/default_run.py [--runs 3] [--extra="--time-budget 5"]

Run it on an otherwise idle machine; with `--extra="--time-budget MIN"` the result also depends on its speed.
"""
import argparse, json, shutil, statistics, subprocess, sys, time
from pathlib import Path
from _util import meta, write, TMP

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--runs', type=int, default=3); ap.add_argument('--extra', default='', help='more arguments, one string')
    a = ap.parse_args(argv)
    runs = []
    for i in range(a.runs):
        out = TMP/'default_run'/f'run{i}'
        if out.exists(): shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        load = round(__import__('os').getloadavg()[0], 2); t = time.perf_counter()
        r = subprocess.run(['whale-kernel', 'run', '--out', str(out), *a.extra.split()], capture_output=True, text=True)
        wall = round(time.perf_counter() - t, 1)
        s = json.loads((out/'summary.json').read_text()) if (out/'summary.json').exists() else {}
        log = r.stdout + r.stderr
        (out.parent/f'run{i}.log').write_text(log)
        runs.append(dict(rc=r.returncode, wall_s=wall, load_before=load, log_lines=len(log.splitlines()),
                         test=s.get('test'), valid=s.get('valid'), kept=s.get('kept'), blend=s.get('blend'),
                         stages={k: v['secs'] for k,v in (s.get('stages') or {}).items()}))
        print(f"run {i}: {wall}s, rc {r.returncode}, {runs[-1]['log_lines']} log lines, test {s.get('test')}", flush=True)
    med = lambda k: statistics.median(k(r) for r in runs)
    res = dict(command=' '.join(['whale-kernel run --out DIR', *a.extra.split()]), runs=runs,
               median_wall_s=med(lambda r: r['wall_s']), median_blend_test=med(lambda r: (r['test'] or {}).get('blend', 0)),
               max_log_lines=max(r['log_lines'] for r in runs))
    write('default_run', {**meta(), **res})
    print(json.dumps({k: res[k] for k in ('median_wall_s', 'median_blend_test', 'max_log_lines')}))

if __name__ == '__main__': main()
