"""LAP solve time and Siamese all-pairs scoring time at the competition's size (n = 15,697 known-whale train photos),
and the time of a Siamese epoch on the synthetic `cpu` default with the mining's share. Writes bench/results/lap.md.
    nice python bench/bench_lap.py                     # CPU: LAP + scoring + epochs (minutes)
    python bench/bench_lap.py --gpu OUT.json           # GPU: all-pairs scoring only, numbers to OUT.json
    python bench/bench_lap.py --merge-gpu OUT.json     # add those GPU numbers to bench/results/lap.md
Scoring uses synthetic features ~N(0,1) (the branch ends in a batch norm) and a random head made less smooth than at
init; paths too slow to run in full are timed on a subset of query rows and scaled by the row ratio (marked 'scaled').
"""
import argparse, json, platform, time, os, re, sys
from pathlib import Path
import numpy as np, torch

RES = Path(__file__).parent/'results'/'lap.md'

def tm(f, reps=1):
    "Best wall time of `reps` calls of `f`, and its last result"
    best, r = float('inf'), None
    for _ in range(reps):
        t = time.perf_counter(); r = f()
        if torch.cuda.is_available(): torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, r

def head_and_feats(n, d, device, seed=0):
    from whale_kernel.pairscore import SymmetricHead
    torch.manual_seed(seed)
    h = SymmetricHead(d, 32).to(device).eval()
    with torch.no_grad(): h.mid.weight.mul_(3); h.out.weight.mul_(3)
    return h, torch.randn(n, d, device=device)

def fmt_err(fa, ex):
    e = (fa - ex).abs()
    return dict(max_err=float(e.max()), mean_err=float(e.mean()), logit_std=float(ex.std()),
                top1=float((fa.argmax(1) == ex.argmax(1)).float().mean()))

def bench_scoring(n, d, device, sub_naive, sub_exact, compile_exact=False, triton=False, deadline=float('inf'), dump=None):
    "Seconds for all n×n pair logits by each path (full or scaled from a row subset) and the fast path's error"
    from whale_kernel.pairscore import scores_naive, scores_exact, scores_fast, scores_triton
    h, f = head_and_feats(n, d, device)
    out = {}
    def add(name, secs, rows, note=''):
        out[name] = dict(seconds=secs * n / rows, measured_rows=rows, scaled=rows < n, note=note)
        print(f'{name:28s} {out[name]["seconds"]:9.2f} s' + (f'  (scaled from {rows} rows)' if rows < n else ''), flush=True)
        if dump: dump(out)
    scores_naive(h, f[:8], f[:64], chunk=64); scores_exact(h, f[:8], f[:64])   # warm up
    t, _ = tm(lambda: scores_naive(h, f[:sub_naive], f, chunk=64 if device == 'cpu' else 256, device=device))
    add('naive (chunked head)', t, sub_naive, 'materialises chunk²×d×mid')
    t, ex = tm(lambda: scores_exact(h, f[:sub_exact], f, chunk=128 if device == 'cpu' else 512, device=device))
    add('exact (loop over mid)', t, sub_exact, 'chunk²×d intermediates')
    if triton:
        try:
            scores_triton(h, f[:64], f[:64])
            for bp, bq, nw in [(32, 64, 4), (64, 64, 8)][:1 if device == 'cuda' else 2]:
                t, tr = tm(lambda: scores_triton(h, f, f, bp=bp, bq=bq, num_warps=nw), reps=2)
                add(f'exact, Triton kernel {bp}x{bq}/{nw}w', t, n)
            out['triton_vs_exact_subset'] = fmt_err(tr[:sub_exact], ex)
        except Exception as e: print('triton failed:', repr(e)[:300]); out['triton'] = dict(error=repr(e)[:300]); tr = None
    for r in (16, 32):
        scores_fast(h, f[:256], f[:256], rank=r, device=device)
        t, fa = tm(lambda: scores_fast(h, f, f, rank=r, device=device), reps=2 if device != 'cpu' else 1)
        add(f'fast, rank {r}', t, n, f'one matmul, inner dim {d*r}')
        out[f'fast, rank {r}'].update(err_vs_exact=fmt_err(fa[:sub_exact], ex))
        t, fr = tm(lambda: scores_fast(h, f, f, rank=r, refine=16, device=device), reps=1)
        add(f'fast, rank {r}, refine 16', t, n, 'top 16 of each row re-scored exactly')
    if device == 'cuda':
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        t, fa = tm(lambda: scores_fast(h, f, f, rank=32, device=device), reps=2)
        torch.backends.cuda.matmul.allow_tf32 = prev
        add('fast, rank 32, TF32 matmul', t, n); out['fast, rank 32, TF32 matmul'].update(err_vs_exact=fmt_err(fa[:sub_exact], ex))
    if compile_exact and time.perf_counter() > deadline: print('skipping torch.compile: past the deadline')
    elif compile_exact:
        from whale_kernel.pairscore import pair_logits
        try:
            pl = torch.compile(pair_logits, dynamic=True)
            @torch.no_grad()
            def comp(q, g, chunk=512):
                return torch.cat([torch.cat([pl(h, q[i:i+chunk, None], g[None, j:j+chunk]) for j in range(0, len(g), chunk)], 1)
                                  for i in range(0, len(q), chunk)]).cpu()
            c0 = time.perf_counter(); comp(f[:600], f[:700]); cc = time.perf_counter() - c0
            t, _ = tm(lambda: comp(f[:sub_exact], f), reps=2)
            add('exact, torch.compile', t, sub_exact, f'pair_logits compiled (dynamic shapes); compile + first call {cc:.0f} s')
        except Exception as e: print('torch.compile failed:', repr(e)[:300]); out['exact, torch.compile'] = dict(error=repr(e)[:300])
    return out

def bench_lap(n, seed=0):
    "Seconds to solve one mining LAP at n×n (cost = -score + K·noise, same-whale cells masked) per solver and block count"
    from whale_kernel.lap import available_solvers, lap_solve, block_lap, PairMiner
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.zipf(1.6, n), 40); ids = np.repeat(np.arange(len(counts)), counts)[:n]   # long tail
    ids = ids.astype(str).astype(object)
    pm = PairMiner(ids, extra=False, seed=0)
    score = rng.random((pm.n, pm.m), dtype=np.float32)
    cost = pm.cost(np.arange(pm.n), np.arange(pm.m), score, k=0.25)
    out = dict(n_rows=pm.n, n_cols=pm.m)
    for s in available_solvers():
        t, x = tm(lambda: lap_solve(cost, solver=s))
        out[s] = dict(seconds=t, cost=float(cost[np.arange(len(x)), x].sum())); print(f'{s:10s} n={pm.n}: {t:7.2f} s', flush=True)
    for b in (2, 4, 8):
        t, x = tm(lambda: block_lap(cost, blocks=b, rng=0))
        out[f'block LAP B={b}'] = dict(seconds=t, cost=float(cost[np.arange(len(x)), x].sum()))
        print(f'block B={b}: {t:7.2f} s', flush=True)
    for b in (1, 4):
        pm.used_r, pm.used_c = pm.used_r[:0], pm.used_c[:0]
        t, _ = tm(lambda: pm.negatives(score, k=0.25, blocks=b))
        out[f'PairMiner.negatives B={b}'] = dict(seconds=t); print(f'miner B={b}: {t:7.2f} s', flush=True)
    return out

def bench_epochs(data, epochs=None):
    "Per-epoch seconds of `fit_siamese` on a synthetic competition with the cpu preset, split into mining parts"
    import fastai.learner as FL
    from fastai.callback.progress import ProgressCallback
    FL.defaults.callbacks = [c for c in FL.defaults.callbacks if c is not ProgressCallback]
    from whale_kernel.core import get_preset
    from whale_kernel.data import read_competition, merge_duplicates, cache_images, valid_split, NEW_WHALE
    from whale_kernel.siamese import fit_siamese
    p = get_preset('cpu', size=(128, 256), **({} if epochs is None else dict(siamese_epochs=(epochs, epochs))))   # the cpu recipe (05_siamese)
    comp = read_competition(data); train = merge_duplicates(comp.train)
    imgs, _ = cache_images(train, p.size, Path(data)/'..'/'bench_cache', name='train')
    va = valid_split(train, seed=p.seed); ids = train.Id.values
    t = time.perf_counter()
    learn = fit_siamese(np.asarray(imgs), ids, np.flatnonzero(~va), np.flatnonzero(va & (ids != NEW_WHALE)), preset=p)
    return dict(preset=p.name, size=list(p.size), n_train=int((~va).sum()), anchors=learn.lap_mining.miner.n,
                candidates=learn.lap_mining.miner.m, fit_seconds=time.perf_counter() - t, threads=torch.get_num_threads(),
                frozen=p.siamese_mode == 'frozen', epochs=p.siamese_epochs,
                stats=learn.lap_mining.stats, valid=[list(map(float, v[:3])) for v in learn.recorder.values])

def machine():
    if torch.cuda.is_available(): return torch.cuda.get_device_name(0)
    return f'{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU, shared with other jobs'

def write_md(cpu, gpu=None):
    L = [f'# LAP and all-pairs scoring\n', f'Written by `bench/bench_lap.py` on {cpu["machine"]}; CPU sections with torch threads = '
         f'{cpu.get("threads_scoring", cpu["threads"])} (LAP, scoring), {cpu.get("epochs", {}).get("threads", "-")} (epochs).',
         'Scoring: n = 15,697 synthetic features (d = 256, mid = 32); LAP: the mining cost of n photos of a long-tailed',
         'id set (same-whale cells masked), K = 0.25.\n']
    if 'lap' in cpu:
        lp = cpu['lap']; L += [f'## LAP, {lp["n_rows"]}×{lp["n_cols"]} (CPU)\n', '| solver | seconds | assignment cost |', '|---|---|---|']
        L += [f'| {k} | {v["seconds"]:.2f} | {v.get("cost", float("nan")):.1f} |' for k, v in lp.items() if isinstance(v, dict)]
        L.append('')
    for tag, sc in [('CPU', cpu.get('scoring')), (gpu['machine'] if gpu else None, gpu['scoring'] if gpu else None)]:
        if not sc: continue
        base = sc['naive (chunked head)']['seconds']
        L += [f'## All-pairs scoring, 15,697² pairs ({tag})\n', '| path | seconds | vs naive | note | error vs exact (max / mean, logit std; top-1 agreement) |', '|---|---|---|---|---|']
        for k, v in sc.items():
            if 'seconds' not in v: continue
            e = v.get('err_vs_exact'); es = f'{e["max_err"]:.4f} / {e["mean_err"]:.5f} ({e["logit_std"]:.2f}); {e["top1"]:.3f}' if e else ''
            L.append(f'| {k} | {v["seconds"]:.2f}{" (scaled)" if v.get("scaled") else ""} | {base / v["seconds"]:.1f}× | {v.get("note", "")} | {es} |')
        L.append('')
    if 'epochs' in cpu:
        ep = cpu['epochs']
        L += [f'## Siamese epochs, synthetic default, `{ep["preset"]}` preset at {ep["size"][0]}×{ep["size"][1]} (CPU)\n',
              f'{ep["n_train"]} train photos, {ep["anchors"]} anchors, {ep["candidates"]} negative candidates, {len(ep["stats"])} epochs; '
              f'fit {ep["fit_seconds"]:.0f} s, of which {ep["fit_seconds"] - sum(s.get("epoch_s", 0) for s in ep["stats"]):.0f} s before the first epoch'
              + (' (frozen backbone: pooled features of every photo and its mirror).' if ep.get('frozen') else '.'),
              'refresh = branch features of all candidates + their score matrix (every `lap_every` epochs, once K < k_random);',
              'score = slicing (or computing) the score blocks the LAP asks for; lap = solver + masks + repairs; share = (refresh+score+lap)/epoch.\n',
              '| epoch | K | refresh s | score s | lap s | epoch s | mining share |', '|---|---|---|---|---|---|---|']
        for s in ep['stats']:
            if not (s.get('refreshed', s['refresh'] > 0.05) or s['epoch'] % 10 == 0 or s is ep['stats'][-1]): continue
            m = s['refresh'] + s['score'] + s['lap']
            L.append(f'| {s["epoch"]} | {s["k"]:.2f} | {s["refresh"]:.2f} | {s["score"]:.2f} | {s["lap"]:.3f} | {s.get("epoch_s", float("nan")):.1f} | {m / s.get("epoch_s", float("nan")):.1%} |')
        tot = sum(s.get('epoch_s', 0) for s in ep['stats']); mt = sum(s['refresh'] + s['score'] + s['lap'] for s in ep['stats'])
        L += ['', f'(Rows: every 10th epoch and each refresh.) Mean epoch {tot / len(ep["stats"]):.2f} s; mining {mt / tot:.1%} of the epochs\' time.', '']
    if gpu: L += ['Notes: the GPU figures come from one `--gpu --quick` call on a lent card (torch ' + gpu.get('torch', '?') + '); naive was',
                  'timed on 256 query rows and exact on 512, then scaled. The Triton and fast timings include copying the 15,697² float32',
                  'result (985 MB) to host memory, which is most of their time. DESIGN.md quotes 36 s for its naive head on an H100.', '']
    RES.parent.mkdir(exist_ok=True); RES.write_text('\n'.join(L) + '\n')
    (RES.with_suffix('.json')).write_text(json.dumps(dict(cpu=cpu, gpu=gpu), indent=1, default=float))
    print(f'wrote {RES}')

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=15697); ap.add_argument('--d', type=int, default=256)
    ap.add_argument('--gpu'); ap.add_argument('--merge-gpu'); ap.add_argument('--data', default='/tmp/whale_bench/synth')
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--skip', nargs='*', default=[]); ap.add_argument('--epochs', type=int); ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1]))
    if a.gpu:
        dump = lambda sc: Path(a.gpu).write_text(json.dumps(dict(machine=machine(), torch=torch.__version__, scoring=sc), indent=1))
        sc = bench_scoring(a.n, a.d, 'cuda', sub_naive=256 if a.quick else 512, sub_exact=512 if a.quick else 1024,
                           compile_exact=not a.quick, triton=True, deadline=time.perf_counter() + 100, dump=dump)
        dump(sc)
        sys.exit()
    old = json.loads(RES.with_suffix('.json').read_text()) if RES.with_suffix('.json').exists() else {}
    if a.merge_gpu:
        write_md(old['cpu'], json.loads(Path(a.merge_gpu).read_text())); sys.exit()
    torch.set_num_threads(a.threads)
    cpu = dict(old.get('cpu', {}), machine=machine(), threads=a.threads)
    if 'scoring' not in a.skip: cpu['threads_scoring'] = a.threads
    if 'lap' not in a.skip: cpu['lap'] = bench_lap(a.n)
    if 'scoring' not in a.skip: cpu['scoring'] = bench_scoring(a.n, a.d, 'cpu', sub_naive=64, sub_exact=128, compile_exact=True)
    if 'epochs' not in a.skip:
        if not (Path(a.data)/'train.csv').exists():
            from whale_kernel.synth import make_synth
            make_synth(a.data, seed=42)
        cpu['epochs'] = bench_epochs(a.data, a.epochs)
    write_md(cpu, old.get('gpu'))
