"""All-pairs Siamese scoring, n × n pairs: the naive chunked head (`scores_naive`) against ours (`scores_triton` on CUDA
when Triton compiles, else `scores_fast`).

    python bench/pairs.py [--quick] [--n 15697] [--d 512]

Features are ~N(0,1) (the branch ends in a batch norm), the head a random `SymmetricHead` made less smooth than at init.
The naive head is timed on `--naive-rows` query rows and scaled by n / rows (`naive_scaled`); ours runs in full. Both
include copying the n×n float32 result to host memory. On a CPU the default n is 3,000 (stated in the JSON: `n`).
Writes bench/results/pairs.json with `naive_s`, `ours_s`, `speedup` (and `fast_s`, the low-rank path, for reference).
"""
import argparse, time
import numpy as np, torch
from _util import meta, write, cuda, cpu_threads, Timer

def head_and_feats(n:int, d:int, device, seed:int=0):
    from whale_kernel.pairscore import SymmetricHead
    torch.manual_seed(seed)
    h = SymmetricHead(d, 32).to(device).eval()
    with torch.no_grad(): h.mid.weight.mul_(3); h.out.weight.mul_(3)
    return h, torch.randn(n, d, device=device)

def ours(h, f, name:str):
    from whale_kernel.pairscore import scores_triton, scores_fast
    return scores_triton(h, f, f) if name == 'triton' else scores_fast(h, f, f)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--n', type=int, default=None)
    ap.add_argument('--d', type=int, default=512, help='branch features (the kaggle preset: 512)')
    ap.add_argument('--naive-rows', type=int, default=None); ap.add_argument('--out')
    a = ap.parse_args(argv); cpu_threads()
    dev = 'cuda' if cuda() else 'cpu'
    n = a.n or (15697 if cuda() else (600 if a.quick else 3000))
    rows = min(n, a.naive_rows or (256 if cuda() else (32 if a.quick else 64)))
    h, f = head_and_feats(n, a.d, dev)
    from whale_kernel.pairscore import scores_naive, scores_exact, scores_fast
    name = 'fast'
    if cuda():
        try:
            from whale_kernel.pairscore import scores_triton
            ex = scores_exact(h, f[:64], f[:512]); tr = scores_triton(h, f[:64], f[:512])   # compiles the kernel
            if (tr - ex).abs().max() > 1e-3: raise RuntimeError(f'triton differs from exact by {(tr - ex).abs().max():.2e}')
            name = 'triton'
        except Exception as e: print('triton unusable, timing scores_fast:', repr(e)[:200], flush=True)
    res = meta(n=n, d=a.d, ours=f'scores_{name}', naive_rows=rows, naive_scaled=rows < n,
               note='n = 15,697 as the competition' if n == 15697 else f'n = {n} (smaller than 15,697: a CPU)')
    scores_naive(h, f[:8], f[:64], chunk=64)                                                # warm up
    chunk = 256 if cuda() else 64
    with Timer() as t: scores_naive(h, f[:rows], f, chunk=chunk)
    res['naive_s'] = t.s * n / rows; print(f'naive  {res["naive_s"]:8.2f} s ({"scaled from " + str(rows) + " rows" if rows < n else "full"})', flush=True)
    ours(h, f, name)      # warm-up at the timed shapes: Triton specialises (and compiles) on sizes and strides
    with Timer() as t: s = ours(h, f, name)
    res['ours_s'] = t.s; res['speedup'] = res['naive_s'] / res['ours_s']
    print(f'{name:6s} {res["ours_s"]:8.2f} s   speedup {res["speedup"]:.1f}x', flush=True)
    ex = scores_exact(h, f[:128], f)
    res['ours_err_vs_exact'] = dict(max=float((s[:128] - ex).abs().max()), top1=float((s[:128].argmax(1) == ex.argmax(1)).float().mean()))
    if name != 'fast':
        scores_fast(h, f[:256], f)
        with Timer() as t: scores_fast(h, f, f)
        res['fast_s'] = t.s; print(f'fast   {res["fast_s"]:8.2f} s', flush=True)
    p = write('pairs', res, a.out); print(f'wrote {p}')
    return res

if __name__ == '__main__': main()
