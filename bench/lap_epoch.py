"""LAP mining time against the Siamese epoch time, on a train set shaped like the competition's (n = 15,697 known-whale
photos of 5,004 ids with the real long tail, plus 9,664 new_whale).

    python bench/lap_epoch.py [--quick] [--preset kaggle] [--blocks 4] [--n-known 15697]

`lap_s`: one `PairMiner.epoch_pairs` with the fit's settings (`extra=True`: anchors are photos of ids with ≥ 2 photos,
candidates all photos; K = 0.25, the preset's `lap_blocks`), scored as `LapMining` scores: a random `SymmetricHead`
factored by `HeadFactors` over N(0,1) features, `scores_fast` on each block the LAP asks for (`score_s` of it).
`epoch_s`: a Siamese epoch (one positive and one negative pair per anchor: 4·anchors photos) at the project's Siamese
learner throughput, full fine-tune at the preset's arch, `siamese_size` and batch, timed over a few steps on synthetic
JPEGs (`make_synth` → `cache_images` at the preset's `size` → `pair_dls` resizing to `siamese_size` on the device) and
scaled linearly to the anchors. `refresh_s`: the branch features of all candidates (every `lap_every` epochs).
Writes bench/results/lap_epoch.json with `lap_s`, `epoch_s`, `lap_share` = lap_s / epoch_s and
`mining_share` = (lap_s + refresh_s / lap_every) / epoch_s.
"""
import argparse, os, time
import numpy as np, torch
from _util import meta, write, cuda, cpu_threads, sync, synth_data, train_cache, Timer, preset_size, siamese_size, with_fields

def competition_ids(n_known:int=15697, n_ids:int=5004, n_new:int=9664, seed:int=0) -> np.ndarray:
    "Train ids shaped like the competition's: `n_known` photos of `n_ids` whales (synth's long tail) and `n_new` new_whale"
    from whale_kernel.synth import long_tail_counts
    from whale_kernel.data import NEW_WHALE
    rng = np.random.default_rng(seed)
    c = long_tail_counts(rng, n_ids, 73)
    while c.sum() > n_known: c[np.argmax(c)] -= 1                       # trim the head of the tail
    if c.sum() < n_known: c += np.bincount(rng.choice(np.flatnonzero(c >= 2), n_known - c.sum()), minlength=len(c))
    ids = np.r_[np.repeat([f'w_{i:05d}' for i in range(n_ids)], c), [NEW_WHALE]*n_new].astype(object)
    return ids[rng.permutation(len(ids))]

def lap_scorer(miner, d:int, rank:int, max_cells:int=50_000_000, device=None):
    "A `LapMining`-like score(r, c) over random features of the candidates, and a dict accumulating its seconds"
    from whale_kernel.pairscore import SymmetricHead, HeadFactors, scores_fast
    dev = device or ('cuda' if cuda() else 'cpu')
    torch.manual_seed(0)
    head = SymmetricHead(d, 32).to(dev).eval()
    feats = torch.randn(miner.m, d, device=dev)
    fac = HeadFactors(head, [feats], rank=rank)
    st = dict(score_s=0.)
    def _score(r, c): return scores_fast(head, feats[torch.as_tensor(r, device=dev)], feats[torch.as_tensor(c, device=dev)], factors=fac).sigmoid().numpy()
    S = _score(np.arange(miner.n), np.arange(miner.m)) if miner.n * miner.m <= max_cells else None
    def score(r, c):
        t = time.perf_counter()
        s = _score(r, c) if S is None else S[np.ix_(r, c)]
        st['score_s'] += time.perf_counter() - t
        return s
    return score, st

def time_lap(ids, blocks:int, d:int, rank:int, k:float=0.25, seed:int=0) -> dict:
    "Seconds of one `epoch_pairs` (LAP mining) over `ids` with `blocks` blocks, and its scoring part"
    from whale_kernel.lap import PairMiner, available_solvers
    pm = PairMiner(ids, extra=True, seed=seed)
    score, st = lap_scorer(pm, d, rank)
    with Timer() as t: pairs = pm.epoch_pairs(score, k=k, blocks=blocks)
    assert len(pairs) == 2 * pm.n
    return dict(lap_s=t.s, score_s=st['score_s'], solve_s=t.s - st['score_s'], anchors=pm.n, candidates=pm.m, blocks=blocks,
                solver=available_solvers()[0], d=d, rank=rank, k=k)

def siamese_rate(p, a, size, ssz) -> dict:
    "Train img/s of the Siamese learner (default and tuned) and inference img/s of its branch, at preset `p`'s sizes"
    import train_throughput as T
    from whale_kernel.data import NEW_WHALE
    from whale_kernel.lap import PairMiner
    from whale_kernel.siamese import branch_features
    data = synth_data(a.data, n_whales=a.whales) if a.data is None else a.data
    imgs, ids, _ = train_cache(data, size)
    imgs = np.asarray(imgs)
    opt = dict(steps=a.steps, warmup=a.warmup, workers=a.workers)
    ta = T.parse(['--arch', p.arch, '--bs', str(p.bs), '--n-feats', str(p.siamese_feats)] + (['--quick'] if a.quick else [])
                 + [o for k,v in opt.items() if v is not None for o in (f'--{k}', str(v))])
    ta.size, ta.resize = tuple(size), tuple(ssz)
    n_rows = (ta.warmup + ta.steps + 3) * ta.bs
    pairs = PairMiner(ids, seed=0).epoch_pairs(k=100., record=False)
    pairs = pairs[np.random.default_rng(0).permutation(np.resize(np.arange(len(pairs)), n_rows))]
    res = {}
    for n in a.variants.split(','):
        learn = T.siamese_learner_v(imgs, pairs, ta, T.SIA_VARIANTS[n])
        res[n] = T.time_learner(learn, ta.warmup, ta.steps, 2 * ta.bs)
        print(f'siamese {n} {res[n]:.1f} train img/s at {ta.resize}', flush=True)
    br = learn.model.branch
    dev = next(br.parameters()).device
    x = imgs[np.resize(np.arange(len(imgs)), 4 * ta.bs)]
    kw = T._kw(branch_features, dict(size=ta.resize, device=dev))
    branch_features(br, x[:ta.bs], **kw)
    with Timer() as t: branch_features(br, x, **kw)
    res['infer'] = len(x) / t.s
    print(f'branch inference {res["infer"]:.1f} img/s', flush=True)
    return res

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--preset', default='kaggle')
    ap.add_argument('--arch'); ap.add_argument('--bs', type=int); ap.add_argument('--siamese-size', type=int, nargs=2)
    ap.add_argument('--size', type=int, nargs=2, help='cache size H W (default: the preset)')
    ap.add_argument('--n-known', type=int, default=None, help='known-whale photos (default 15697; quick 3000)')
    ap.add_argument('--blocks', type=int, nargs='*', default=None, help="block counts (default: the preset's lap_blocks)")
    ap.add_argument('--d', type=int, default=None, help='feature size scored (default: preset siamese_feats on GPU, 32 on CPU)')
    ap.add_argument('--rank', type=int, default=None, help='HeadFactors rank (default 32 on GPU, 16 on CPU)')
    ap.add_argument('--steps', type=int); ap.add_argument('--warmup', type=int); ap.add_argument('--workers', type=int)
    ap.add_argument('--variants', default='default,tuned'); ap.add_argument('--data'); ap.add_argument('--whales', type=int, default=60)
    ap.add_argument('--out')
    a = ap.parse_args(argv); cpu_threads()
    torch.backends.cudnn.benchmark = True
    from whale_kernel.core import get_preset
    p = get_preset(a.preset)
    p = with_fields(p, arch=a.arch or ('efficientnet_lite0' if a.quick else None), bs=a.bs or (8 if a.quick else None))
    size = tuple(a.size or ((64, 128) if a.quick else preset_size(p)))
    ssz = tuple(a.siamese_size or ((64, 64) if a.quick else siamese_size(p)))
    n_known = a.n_known or (3000 if a.quick else 15697)
    d, rank = a.d or (p.siamese_feats if cuda() else 32), a.rank or (32 if cuda() else 16)
    ids = competition_ids(n_known, n_ids=round(5004 * n_known / 15697), n_new=round(9664 * n_known / 15697))
    res = meta(preset=p.name, arch=p.arch, size=list(size), siamese_size=list(ssz), bs=p.bs,
               lap_every=p.lap_every, n_known=n_known, n_train=len(ids), weights='random init',
               note=('n = 15,697 as the competition' if n_known == 15697 else f'n = {n_known} known photos (smaller than 15,697)')
                    + '; epoch timed over a few steps and scaled linearly to the anchors')
    for b in (a.blocks or [p.lap_blocks]):
        r = time_lap(ids, b, d, rank)
        res.setdefault('laps', {})[str(b)] = r
        print(f'LAP blocks={b}: {r["lap_s"]:.2f} s (score {r["score_s"]:.2f} s) for {r["anchors"]}×{r["candidates"]}', flush=True)
        write('lap_epoch', res, a.out)
    lap = res['laps'][str((a.blocks or [p.lap_blocks])[0])]
    res.update(lap_s=lap['lap_s'], anchors=lap['anchors'], candidates=lap['candidates'], blocks=lap['blocks'])
    rates = siamese_rate(p, a, size, ssz)
    res['siamese_img_s'] = {k:v for k,v in rates.items() if k != 'infer'}; res['branch_infer_img_s'] = rates['infer']
    per_epoch = 4 * lap['anchors']                                    # 2 pairs per anchor, 2 photos per pair
    res['epoch_photos'] = per_epoch
    res['refresh_s'] = lap['candidates'] / rates['infer']
    for n,v in res['siamese_img_s'].items():
        e = per_epoch / v
        sfx = '' if n == 'default' else f'_{n}'
        res[f'epoch_s{sfx}'] = e
        res[f'lap_share{sfx}'] = res['lap_s'] / e
        res[f'mining_share{sfx}'] = (res['lap_s'] + res['refresh_s'] / p.lap_every) / e
    if 'epoch_s' in res:
        print(f'lap {res["lap_s"]:.2f} s, epoch {res["epoch_s"]:.1f} s: share {res["lap_share"]:.1%} '
              f'(with feature refresh {res["mining_share"]:.1%})', flush=True)
    pth = write('lap_epoch', res, a.out); print(f'wrote {pth}')
    return res

if __name__ == '__main__': main()
