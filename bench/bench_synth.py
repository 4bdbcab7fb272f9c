"""Synthetic competition generator throughput (images/s). Writes bench/results/synth.md.
    python bench/bench_synth.py [--n-whales 220] [--small 40]
Times `render_photo` alone, `make_synth` serial (n_workers=1) on a small competition, and the default
`make_synth(out)` (all photos JPEG-written, up to 4 worker processes)."""
import argparse, io, os, platform, shutil, tempfile, time
from pathlib import Path
from whale_kernel.synth import make_synth, render_photo, make_whale, rng_for, synth_summary

def cpu():
    t = os.times(); return t.user + t.system + t.children_user + t.children_system

def timed(f):
    "Result, wall seconds and CPU seconds (this process plus finished worker processes) of `f()`"
    t, c = time.perf_counter(), cpu(); r = f(); return r, time.perf_counter() - t, cpu() - c

if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('--n-whales', type=int, default=220); ap.add_argument('--small', type=int, default=40)
    a = ap.parse_args(); tmp = Path(tempfile.mkdtemp()); rows = []
    def render(n=100):
        for i in range(n):
            im, _ = render_photo(make_whale(0, i % 10), rng_for(0, 2, i)); im.save(io.BytesIO(), 'JPEG', quality=85)
    _, s, c = timed(render); rows.append(('render_photo + JPEG encode in memory, 1 process', 100, s, c))
    for name, kw in [(f'make_synth(n_whales={a.small}, n_workers=1)', dict(n_whales=a.small, n_workers=1)),
                     (f'make_synth(n_whales={a.small}, n_workers=2)', dict(n_whales=a.small, n_workers=2)),
                     (f'make_synth(n_whales={a.n_whales}) default workers', dict(n_whales=a.n_whales))]:
        d, s, c = timed(lambda: make_synth(tmp/name.replace(' ', '_'), seed=0, **kw))
        sm = synth_summary(d); rows.append((name, sm['train'] + sm['test'], s, c))
    shutil.rmtree(tmp)
    out = Path(__file__).parent/'results'/'synth.md'; out.parent.mkdir(exist_ok=True)
    lines = ['# Synthetic competition generator throughput', '',
             f'Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, '
             f'python {platform.python_version()}); load average at the end {os.getloadavg()[0]:.1f} (the machine is shared, so '
             'wall-clock rates are noisy; images per CPU-second is the load-independent figure).', '',
             '| what | photos | wall s | images/s (wall) | CPU s | images per CPU-s |', '|---|---:|---:|---:|---:|---:|']
    lines += [f'| {n} | {k} | {s:.1f} | {k/s:.1f} | {c:.1f} | {k/c:.1f} |' for n, k, s, c in rows]
    lines += ['', f'Default competition (n_whales={a.n_whales}, seed=0): {sm}']
    out.write_text('\n'.join(lines) + '\n'); print('\n'.join(lines))
