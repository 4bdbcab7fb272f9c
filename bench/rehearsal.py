"""A full-size rehearsal of the Kaggle run on this CPU: a synthetic competition with the real one's shape, then the time
and peak memory of the data layer, of everything after the features, and of whole `cpu`-preset runs at 1/16-1/4 size.

    python bench/rehearsal.py [--quick] [--parts gen,data,post,runs] [--root /tmp/whale_rehearsal] [--out FILE]
                              [--keep-cache] [--sia-fracs 1/16,1/4] [--budget MIN] [--threads N] [--set K=V,..]

`gen`: 25,361 train photos (9,664 new_whale; 5,004 whales: the real 1-5 photo counts, a fitted power law for 6-72, one
whale of 73), 7,960 test (27.6 % unseen whales), JPEGs at 1050×700 by `synth.render_photo`, boxes in their own folder;
then copies at 1/16, 1/8, 1/4. A folder with its `.done` marker is reused. `data`: `read_competition`, `merge_duplicates`,
`auto_size` and the four `cache_images` passes of the `kaggle` preset on the full set, each a `StageLog` stage. `post`:
`pipeline.score_model` for knn, arcface and siamese at the `kaggle` preset's feature shapes on synthetic features (no
training), `blend`, the submission; the Siamese on `--sia-fracs` of the test photos, extrapolated linearly to all of
them unless a share is 1. `runs`: `whale-kernel run` (cpu preset) on the three copies, and the growth exponent b of
secs ≈ c·N^b per stage. Results merge into bench/results/rehearsal.json, one key per part (`--quick`: 1/16-size sets of
300×200 photos under ROOT/quick, runs cut by `--time-budget 0.5`, rehearsal_quick.json; 6-11 minutes on 2 cores).
"""
import argparse, json, math, os, shutil, subprocess, sys, threading, time
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
import numpy as np, pandas as pd, torch
from _util import meta, write, out_path, Timer, cli_argv, sets_arg

FULL = dict(train=25361, new=9664, whales=5004, test=7960, test_new=.276, top=73)
REAL = {1: 2073, 2: 1285, 3: 568, 4: 273, 5: 172}       # whales with k train photos in the real competition
SCALES = (16, 8, 4)

def tail_fit(n:int, photos:int, lo:int=6, hi:int=72):
    "Exponent a of n_k ∝ k^-a (k = `lo`..`hi`) whose `n` whales hold `photos` photos, and integer counts with those totals"
    k = np.arange(lo, hi + 1.); mean = lambda a: (k**(1 - a)).sum()/(k**-a).sum()
    l, h = 0., 10.
    for _ in range(100): m = (l + h)/2; l, h = (m, h) if mean(m) > photos/n else (l, m)
    a = (l + h)/2; x = n*k**-a/(k**-a).sum()
    c = np.floor(x).astype(int); c[np.argsort(-(x - c), kind='stable')[:n - c.sum()]] += 1   # largest remainders
    d = photos - int((c*k).sum())
    while d:              # move one whale at a time between bins: the whale count stays, the photo count closes in
        if d > 0: i = int(np.argmax(c > 0)); j = min(i + d, len(c) - 1)
        else: i = next((i for i in range(-d, len(c)) if c[i]), int(np.flatnonzero(c)[-1])); j = max(i + d, 0)
        c[i] -= 1; c[j] += 1; d -= j - i
    return a, {int(kk): int(v) for kk, v in zip(k, c) if v}

def histogram():
    "Whales per train-photo count {k: n_k} with the real competition's totals, and what is real and what fitted"
    real_ph = sum(k*v for k, v in REAL.items())
    a, tail = tail_fit(FULL['whales'] - sum(REAL.values()) - 1, FULL['train'] - FULL['new'] - real_ph - FULL['top'])
    h = {**REAL, **tail, FULL['top']: 1}
    return h, dict(real='k = 1..5 (whale counts of the real competition)', fitted=f'k = 6..72: n_k ∝ k^-a, a = {a:.4f}, rounded, '
                   'remainder moved between bins', top=f'one whale of {FULL["top"]} (the real largest)', a=a)

def scaled(h:dict, f:float) -> dict:
    "A stratified `f` of the whales of `h`: photo counts sorted, then the middle whale of each of round(whales·f) equal strata"
    c = np.sort(np.concatenate([np.full(v, k) for k, v in h.items()]))[::-1]; n = int(round(len(c)*f))
    s = c[((np.arange(n) + .5)*len(c)/n).astype(int)]
    return {int(k): int(v) for k, v in enumerate(np.bincount(s)) if v}

def plan(h:dict, n_new:int, n_test:int, seed:int) -> pd.DataFrame:
    "Who is in which photo (as `synth.plan_competition`, from a given histogram): Image, split, whale, Id, scene"
    from whale_kernel.synth import rng_for, _hex, _encounters
    rng = rng_for(seed, 0)
    counts = rng.permutation(np.concatenate([np.full(v, k) for k, v in sorted(h.items())])); n = len(counts)
    ids = ['w_' + s for s in _hex(rng, n, 7)]
    n_tn = round(n_test*FULL['test_new']); p = np.sqrt(counts)/np.sqrt(counts).sum()
    whale = np.concatenate([np.repeat(np.arange(n), counts), n + np.arange(n_new), rng.choice(n, n_test - n_tn, p=p),
                            n + n_new + rng.choice(max(1, round(.8*n_tn)), n_tn)])
    split = np.array(['train']*(int(counts.sum()) + n_new) + ['test']*n_test)
    return pd.DataFrame(dict(Image=[s + '.jpg' for s in _hex(rng, len(whale), 8)], split=split, whale=whale,
                             Id=[ids[w] if w < n else 'new_whale' for w in whale], scene=_encounters(rng, whale, .5)))

@lru_cache(256)
def _whale(seed, i): from whale_kernel.synth import make_whale; return make_whale(seed, i)   # photos come whale by whale

def _photo(job):
    "Render and save one planned photo at `size` (W,H); its box"
    from whale_kernel.synth import rng_for, make_scene, render_photo
    comp, seed, i, split, name, whale, scene, size = job
    im, box = render_photo(_whale(seed, whale), rng_for(seed, 2, i), make_scene(rng_for(seed, 4, whale, scene)), size=size)
    im.save(Path(comp)/split/name, quality=int(rng_for(seed, 3, i).integers(85, 91)))
    return box

def gen_set(d:Path, h:dict, n_new:int, n_test:int, seed:int, size) -> dict:
    "Write a competition to `d`/competition, its boxes to `d`/boxes, unless `d`/.done says it is there; counts and timing"
    if (d/'.done').exists(): return {**json.loads((d/'info.json').read_text()), 'reused': True}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    shutil.rmtree(d, ignore_errors=True); comp = d/'competition'
    for s in ('train', 'test'): (comp/s).mkdir(parents=True)
    (d/'boxes').mkdir()
    pl = plan(h, n_new, n_test, seed)
    jobs = [(comp, seed, i, r.split, r.Image, int(r.whale), int(r.scene), tuple(size)) for i, r in enumerate(pl.itertuples())]
    with Timer() as t, ProcessPoolExecutor(os.cpu_count(), mp_context=mp.get_context('fork')) as ex:
        pl[['x0', 'y0', 'x1', 'y1']] = np.array(list(ex.map(_photo, jobs, chunksize=16)), dtype=int)
    tr, te = (pl[pl.split == s].sort_values('Image') for s in ('train', 'test'))
    tr[['Image', 'Id']].to_csv(comp/'train.csv', index=False); te[['Image', 'Id']].to_csv(comp/'solution.csv', index=False)
    vc = tr.Id[tr.Id != 'new_whale'].value_counts(); top = sorted(vc.index, key=lambda i: (-vc[i], i))[:4]
    pd.DataFrame(dict(Image=te.Image, Id=' '.join(['new_whale', *top]))).to_csv(comp/'sample_submission.csv', index=False)
    pd.concat([tr, te])[['Image', 'x0', 'y0', 'x1', 'y1']].to_csv(d/'boxes'/'bounding_boxes.csv', index=False)
    pl.to_csv(d/'plan.csv', index=False)
    gb = sum(f.stat().st_size for f in comp.glob('*/*.jpg'))/1e9
    info = dict(train=len(tr), new_whale=int((tr.Id == 'new_whale').sum()), whales=len(vc), max_per_whale=int(vc.max()),
                test=len(te), test_new_whale=int((te.Id == 'new_whale').sum()), size=list(size), jpeg_gb=round(gb, 2),
                secs=round(t.s, 1), img_s=round(len(pl)/t.s, 1), workers=os.cpu_count(), hist={int(k): v for k, v in h.items()})
    (d/'info.json').write_text(json.dumps(info)); (d/'.done').touch()       # last: a kill before it leaves no complete-looking set
    return info

def part_gen(a, root):
    h, how = histogram(); q = 1/16 if a.quick else 1.
    base = scaled(h, q) if a.quick else h; size = (300, 200) if a.quick else (1050, 700)
    sets = {'full': (base, round(FULL['new']*q), round(FULL['test']*q))} if a.full else {}     # `data` reads the full set
    sets.update({f's{s}': (scaled(h, q/s), round(FULL['new']*q/s), round(FULL['test']*q/s)) for s in a.scales})
    out = dict(histogram=how, synthetic='all photos are synth.render_photo flukes; photo counts per whale: see histogram',
               scaled='copies: a stratified 1/16, 1/8, 1/4 of the whales by photo count (each stratum\'s middle whale), so every '
                      'bin and the photo total scale alike; the whale of 73 is not kept: a copy\'s largest is its top stratum\'s '
                      'middle whale (`max_per_whale`); new_whale and test photos scaled and rounded', sets={})
    seed = lambda k: 0 if k == 'full' else (SCALES.index(int(k[1:])) + 1 if int(k[1:]) in SCALES else int(k[1:]))
    for k, (hh, nn, nt) in sets.items():
        print(f'gen {k}: {sum(hh.values())} whales, {sum(a_*b for a_, b in hh.items()) + nn} train, {nt} test', flush=True)
        out['sets'][k] = gen_set(root/k, hh, nn, nt, a.seed + seed(k), size)
    return out

def part_data(a, root):
    from whale_kernel.core import get_preset, StageLog, peak_rss
    from whale_kernel.data import read_competition, merge_duplicates, auto_size, cache_images
    p = get_preset('kaggle', **({'pixels': 64*128} if a.quick else {})); d = root/'full'
    cache = root/'cache'; shutil.rmtree(cache, ignore_errors=True)
    st, n, w = StageLog(), {}, max(p.workers, 2); base = peak_rss(reset=True)
    with st('read'): comp = read_competition(d/'competition', bbox_csv=d/'boxes'/'bounding_boxes.csv')
    n['read'] = len(comp.train) + len(comp.test)
    with st('merge'): train = merge_duplicates(comp.train)
    with st('auto_size'): size = auto_size(train, p.pixels)
    n['merge'] = n['auto_size'] = len(train)
    steps = [('train', train, .05), ('test', comp.test, .05)] + [(f'test_m{m}', comp.test, m) for m in (0., .15)]
    for name, df, m in steps:
        with st(f'cache_{name}'): cache_images(df, size, cache, margin=m, workers=w, name=name)
        n[f'cache_{name}'] = len(df)
    gb = lambda name: sum(f.stat().st_size for f in cache.glob(f'{name}_{size[0]}x{size[1]}_*.npy') if not f.name.endswith('.ok.npy'))/1e9
    W, H = json.loads((d/'info.json').read_text())['size']; out = dict(preset=p.name, pixels=p.pixels, size=list(size), workers=w, rss_before_gb=round(base or 0, 2), stages={},
               notes=f'synthetic JPEGs ({W}×{H}) written by `gen`, likely in the page cache: decode, not disk, is timed; '
                     'each peak_rss_gb is the process high-water mark in that step (rss_before_gb: torch, fastai, pandas loaded)')
    for k, v in st.rec.items():
        out['stages'][k] = dict(v, photos=n[k], photos_s=round(n[k]/v['secs'], 1) if v['secs'] >= .1 else None)
        if k.startswith('cache_'): out['stages'][k]['cache_gb'] = round(gb(k[6:]), 2)
    out['total'] = dict(secs=round(sum(v['secs'] for v in st.rec.values()), 1),
                        peak_rss_gb=max((v['peak_rss_gb'] or 0) for v in st.rec.values()),
                        cache_gb=round(sum(v.get('cache_gb', 0) for v in out['stages'].values()), 2))
    if not a.keep_cache: shutil.rmtree(cache, ignore_errors=True)
    return out

class Stand:
    "A stand-in for a photo array: `key` names the feature matrix that the fake `features` reads, `n` its rows"
    def __init__(self, key, n): self.key, self.n = key, n
    def __len__(self): return self.n

def _norm(x): return x/np.linalg.norm(x, axis=1, keepdims=True)

def fake_feats(D:int, keys_tr, keys_te, gal, q, seed:int, crops:int=3, radius:float=1.) -> dict:
    """Features (N, 2·D) of train photos and of each test crop: whale centres plus noise, σ set so the nearest of the
    gallery photos `gal` names the whale of about half of the known test photos `q` (1,000 of them)"""
    rng = np.random.default_rng(seed); C = _norm(rng.standard_normal((max(keys_tr.max(), keys_te.max()) + 1, D)).astype(np.float32))
    Ztr, Zte = (rng.standard_normal((len(k), D), dtype=np.float32) for k in (keys_tr, keys_te))
    q = q[rng.permutation(len(q))[:1000]]
    def acc(s):
        G = _norm(C[keys_tr[gal]] + s/math.sqrt(D)*Ztr[gal]); Q = _norm(C[keys_te[q]] + s/math.sqrt(D)*Zte[q])
        return float((keys_tr[gal][np.argmax(Q @ G.T, 1)] == keys_te[q]).mean())
    lo, hi = -3., 3.                          # bisection on log σ: the accuracy falls as σ grows
    for _ in range(14): m = (lo + hi)/2; lo, hi = (m, hi) if acc(math.exp(m)) > .5 else (lo, m)
    s = math.exp((lo + hi)/2)
    jit = lambda x: _norm(x + .25*s/math.sqrt(D)*rng.standard_normal(x.shape, dtype=np.float32))
    two = lambda x: radius*np.concatenate([x, jit(x)], 1)        # the mirrored view: a slightly perturbed copy
    tr, te = _norm(C[keys_tr] + s/math.sqrt(D)*Ztr), _norm(C[keys_te] + s/math.sqrt(D)*Zte)
    return dict(train=two(tr), **{f'test{c}': two(te if c == 0 else jit(te)) for c in range(crops)}, sigma=s, nn_acc=acc(s))

def part_post(a, root):
    import whale_kernel.pipeline as P
    from whale_kernel.core import get_preset, StageLog, NEW_WHALE
    from whale_kernel.data import valid_split
    from whale_kernel.ensemble import blend, ModelScores, ScoreMatrix
    from whale_kernel.metrics import predict_top5, write_submission, map5
    from whale_kernel.knn import knn_similarity
    from whale_kernel.arcface import arcface_similarity, arcface_centre_scores, CosineHead
    from whale_kernel.siamese import siamese_similarity, imprint_head, SymmetricHead
    p, d = get_preset('kaggle'), root/'full'; comp = d/'competition'
    train = pd.read_csv(comp/'train.csv', dtype=str); sol = pd.read_csv(comp/'solution.csv', dtype=str).set_index('Image')
    tnames = list(pd.read_csv(comp/'sample_submission.csv', dtype=str).Image); truth = sol.Id[tnames].values
    ids = train.Id.values.astype(object); va = valid_split(train, seed=p.seed); tr = np.flatnonzero(~va)
    wh = pd.read_csv(d/'plan.csv').set_index('Image').whale          # which whale each photo shows (unseen test whales too)
    ktr, kte = wh[train.Image].values, wh[tnames].values; known_te = np.flatnonzero(truth != NEW_WHALE)
    vocab = sorted(set(ids[tr]) - {NEW_WHALE}); n_ids = len(vocab)
    imgs, timgs = Stand('train', len(train)), [Stand(f'test{c}', len(tnames)) for c in range(3)]

    class ArcNet(torch.nn.Module):      # what `arcface_centre_scores` reads: head, fc.out_features, a parameter's device
        def __init__(s, D): super().__init__(); s.head = CosineHead(D, 2*n_ids, k=2); s.fc = torch.nn.Linear(1, D, bias=False)
    def arc_model(F, D):
        m = ArcNet(D); pos = {w: i for i, w in enumerate(vocab)}; rows = tr[ids[tr] != NEW_WHALE]
        y = np.array([pos[w] for w in ids[rows]]); c = np.zeros((2*n_ids, D), np.float32)
        for v in (0, 1): np.add.at(c, y + v*n_ids, F['train'][rows, v*D:(v + 1)*D])      # imprinted: class means, mirror classes
        w = np.repeat(_norm(c + 1e-6), 2, 0) + .01*np.random.default_rng(0).standard_normal((4*n_ids, D), dtype=np.float32)
        with torch.no_grad(): m.head.weight.copy_(torch.from_numpy(_norm(w)))
        return SimpleNamespace(model=m, wk=dict(vocab=vocab))
    def sia_model(F, D): return SimpleNamespace(model=SimpleNamespace(head=imprint_head(SymmetricHead(D, 32), s=10., c=.1)))
    def knn_model(F, D): return SimpleNamespace(backbone=SimpleNamespace(num_features=D))
    def features(model, im, tta=True, idxs=None):
        M = model.F[im.key]; M = M if idxs is None else M[np.asarray(idxs)]
        return torch.from_numpy(np.ascontiguousarray(M if tta else M[:, :M.shape[1]//2]))
    specs = dict(knn=(1280, knn_model, knn_similarity, None), arcface=(p.emb_dim, arc_model, arcface_similarity, arcface_centre_scores),
                 siamese=(p.siamese_feats, sia_model, siamese_similarity, None))
    st, res, out, old = StageLog(), [], dict(models={}), dict(P.MODELS)
    out['notes'] = ('synthetic features: random whale centres + noise (σ for ~0.5 1-NN accuracy on known test photos), TTA view and '
                    'box crops as small perturbations; fake fits, no training; the ArcFace pseudo-label round (a fit) is not run')
    nt, vn, fr = len(tnames), list(train.Image[va]), sorted(a.sia_fracs)
    def score(name, model, f):
        "score_model on all test photos, or on a random `f` of them (stage `name@f`)"
        if f >= 1: return name, tnames, truth, timgs
        r = np.sort(np.random.default_rng(a.seed).choice(nt, round(f*nt), replace=False))
        for c in range(3): model.F[f'test{c}@{f:g}'] = model.F[f'test{c}'][r]
        return f'{name}@{f:g}', [tnames[o] for o in r], truth[r], [Stand(f'test{c}@{f:g}', len(r)) for c in range(3)]
    try:
        for i, (name, (D, mk, sim, cen)) in enumerate(specs.items()):
            with Timer() as t:
                F = fake_feats(D, ktr, kte, np.flatnonzero(ids != NEW_WHALE), known_te, seed=a.seed + i, radius=math.sqrt(D) if name == 'siamese' else 1.)
                model = mk(F, D); model.F, model.kept = F, None
            P.MODELS[name] = P.ModelSpec(name, lambda *x, model=model, **k: model, features, sim, cen, None)
            print(f'post {name}: features {t.s:.1f}s (σ {F["sigma"]:.3f}, 1-NN {F["nn_acc"]:.3f})', flush=True)
            for f in (fr if name == 'siamese' else [1.]):
                key, tn, tt, ti = score(name, model, f)
                with st(key): ms = P.score_model(name, imgs, P.Split(ids, va, vn, tn), ti, p)
                print(f'post {key}: {st.rec[key]}', flush=True)
            P.MODELS[name] = old[name]; del model, F      # its features go
            out['models'][name] = dict(dims=D, features_secs=round(t.s, 1), valid_map5=round(ms.map_valid, 4),
                                       test_map5=round(map5(predict_top5(ms.pt, ms.test.ids, ms.thr), tt), 4), test_photos=len(tn),
                                       kept={k: ms.info.get(k) for k in ('rerank', 'pseudo', 'centres', 'new_twins') if ms.info.get(k)})
            if len(tn) < nt:       # the blend needs every test photo: the others get −inf (probability 0), said below
                at = {o: i for i, o in enumerate(tnames)}; v = np.full((nt, len(ms.test.ids)), -np.inf, np.float32)
                v[[at[o] for o in tn]] = ms.test.values
                ms = ModelScores(ms.name, ms.valid, ms.truth, ScoreMatrix(tnames, ms.test.ids, v), ms.ab, ms.thr, ms.map_valid, ms.secs, ms.info)
            res.append(ms)
    finally: P.MODELS.clear(); P.MODELS.update(old)
    if fr[-1] < 1:            # the Siamese at full size from its fractions: secs and peak RSS linear in the test photos
        q = [round(f*nt) for f in fr]; ys = [st.rec[f'siamese@{f:g}'] for f in fr]
        ext = lambda y: float(np.polyval(np.polyfit(q, y, 1), nt)) if len(q) > 1 else y[0]*nt/q[0]
        st.rec['siamese'] = dict(secs=round(ext([o['secs'] for o in ys]), 1), peak_rss_gb=round(ext([o['peak_rss_gb'] or 0 for o in ys]), 2),
                                 extrapolated=f'linear in the test photos from {q} of {nt}')
        out['notes'] += (f'; the Siamese ran on {q} of the {nt} test photos (stages siamese@f) and its full-size secs and peak RSS are '
                         'extrapolated linearly; in the blend its missing test rows are −inf, so the blend\'s test MAP@5 is not a 3-model one')
    with st('blend'): ens = blend(res)
    with st('submission'): pr = predict_top5(ens.pt, ens.test.ids, ens.thr); write_submission(root/'post'/'submission.csv', tnames, pr)
    out['blend'] = dict(valid_map5=round(ens.map_valid, 4), test_map5=round(map5(pr, truth), 4), weights=ens.info['weights'])
    out.update(stages=st.rec, n=dict(train=len(train), valid=int(va.sum()), test=nt, crops=3, ids=n_ids), sia_fracs=fr,
               total_secs=round(sum(v['secs'] for k, v in st.rec.items() if '@' not in k), 1))
    return out

def part_runs(a, root, res, save):
    rows = res.get('runs', {}).get('sets', {})     # earlier sizes stay; these are (re)run
    res['runs'] = dict(preset='cpu', budget_min=a.budget, sets=rows,
                       notes='synthetic competitions (`gen` copies); test MAP@5 against their solution.csv; max_rss_gb: the run\'s RSS '
                             'polled every 0.2 s (rusage_max_rss_gb is not the run\'s peak: StageLog resets the kernel\'s high-water '
                             'mark, which rusage reads at exit)')
    for s in a.scales:
        d, o = root/f's{s}', root/'runs'/f's{s}'; shutil.rmtree(o, ignore_errors=True); o.mkdir(parents=True)
        args = ['--data', str(d/'competition'), '--out', str(o), '--boxes', str(d/'boxes'/'bounding_boxes.csv')] + \
               (['--time-budget', str(a.budget)] if a.budget else [])
        cmd = cli_argv(['run'] + args, a.set)    # the cpu preset, with the fields of --set
        print(' '.join(cmd), flush=True); t = time.perf_counter()
        with open(o.parent/f's{s}.log', 'w') as log: pr = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        peak = [0]; th = threading.Thread(target=_watch, args=(pr.pid, peak), daemon=True); th.start()
        _, status, ru = os.wait4(pr.pid, 0); th.join()
        pr.returncode = rc = os.waitstatus_to_exitcode(status)
        r = dict(rc=rc, wall_s=round(time.perf_counter() - t, 1), max_rss_gb=round(peak[0]/2**20, 2),
                 rusage_max_rss_gb=round(ru.ru_maxrss/2**20, 2), log=str(o.parent/f's{s}.log'))
        if (o/'summary.json').exists():
            sm = json.loads((o/'summary.json').read_text())
            r.update({k: sm.get(k) for k in ('n_train', 'n_valid', 'n_test', 'size', 'models', 'stages', 'total_secs', 'valid', 'test')})
            r['kept'] = sm.get('kept')           # what each model kept: its time follows its epochs, not only the photos
        if a.set: r['preset_set'] = a.set
        rows[f's{s}'] = r; print(f's{s}: {r["wall_s"]:.0f}s, {r["max_rss_gb"]} GB, rc {r["rc"]}', flush=True)
        res['runs'].update(growth(rows)); save()
    return res['runs']

def _watch(pid:int, peak:list, every:float=.2):
    "Largest VmRSS (kB) of process `pid` into `peak[0]`, polled until it ends"
    while True:
        try: peak[0] = max(peak[0], next(int(l.split()[1]) for l in open(f'/proc/{pid}/status') if l.startswith('VmRSS')))
        except (OSError, StopIteration, ValueError): return
        time.sleep(every)

def growth(rows:dict) -> dict:
    "Per stage, b and c of secs ≈ c·N^b and peak RSS ≈ c·N^b (least squares on log-log, N train photos), and the full-size value"
    ok = [r for r in rows.values() if r.get('stages') and r.get('n_train')]
    if len(ok) < 2: return {}
    fit = lambda N, y: tuple(np.polyfit(np.log(N), np.log(y), 1)) if len(N) >= 2 else None
    out = {}
    for k in dict.fromkeys(s for r in ok for s in r['stages']):
        for what in ('secs', 'peak_rss_gb'):
            pts = [(r['n_train'], r['stages'][k][what]) for r in ok if k in r['stages'] and (r['stages'][k][what] or 0) > 0]
            if (f := fit(*zip(*pts)) if len(pts) >= 2 else None):
                out.setdefault(k, {})[f'{what}_b'] = round(f[0], 3)
                out[k][f'{what}_full'] = round(math.exp(f[1])*FULL['train']**f[0], 2)
                (n1, y1), (n2, y2) = sorted(pts)[-2:]      # the slope that matters for the full size: the two largest sets
                if len(pts) > 2: out[k][f'{what}_b_last'] = round(math.log(y2/y1)/math.log(n2/n1), 3)
    for what in ('total_secs', 'wall_s', 'max_rss_gb'):
        pts = [(r['n_train'], r[what]) for r in ok if (r.get(what) or 0) > 0]
        if len(pts) >= 2: f = fit(*zip(*pts)); out[f'{what}_b'], out[f'{what}_full'] = round(f[0], 3), round(math.exp(f[1])*FULL['train']**f[0], 1)
    st = [k for k in out if isinstance(out[k], dict) and 'secs_b' in out[k]]
    fast = max(st, key=lambda k: out[k]['secs_b'], default=None)
    fast_last = max((k for k in st if 'secs_b_last' in out[k]), key=lambda k: out[k]['secs_b_last'], default=None)
    return dict(growth={k: v for k, v in out.items() if isinstance(v, dict)}, fastest=fast, fastest_last=fast_last,
                totals={k: v for k, v in out.items() if not isinstance(v, dict)})

def readme(r):
    "Put report.py's table of `r` into bench/README.md, in place of an older one, else before `## Notes` (the rest left as it is)"
    from report import sec_rehearsal
    fn = Path(__file__).resolve().parent/'README.md'; txt = fn.read_text(); sec = '\n'.join(sec_rehearsal([r] if r else [])) + '\n\n'
    head = '## rehearsal:'; i = txt.find(head)
    if i >= 0: j = txt.find('\n## ', i + 1); txt = txt[:i] + sec + (txt[j + 1:] if j >= 0 else '')
    else: i = txt.find('## Notes'); txt = txt[:i] + sec + txt[i:]
    fn.write_text(txt)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='tiny sets under ROOT/quick, writes rehearsal_quick.json')
    ap.add_argument('--parts', default='gen,data,post,runs'); ap.add_argument('--root', default='/tmp/whale_rehearsal')
    ap.add_argument('--out', help='result JSON (default bench/results/rehearsal.json; quick: rehearsal_quick.json)')
    ap.add_argument('--keep-cache', action='store_true', help='keep the data part\'s photo cache (about 20 GB at full size)')
    ap.add_argument('--budget', type=float, default=None, help='--time-budget minutes of each run (default none; quick 0.5)')
    ap.add_argument('--threads', type=int, default=None, help='torch threads of post (default: torch\'s, as a run)')
    ap.add_argument('--sia-fracs', type=lambda s: [float(Fraction(o)) for o in s.split(',')], default=None,
                    help='shares of the test photos the post part\'s Siamese runs on, extrapolated when all < 1 (default 1/16,1/4; quick 1/4,1/2)')
    ap.add_argument('--scales', type=lambda s: [int(o) for o in s.split(',')], default=list(SCALES),
                    help='the copies (1/s of the whales) that gen writes and runs runs, e.g. 16,8,4 (default)')
    ap.add_argument('--set', type=sets_arg, default={},
                    help="preset fields of the runs, e.g. 'equalize=False' (the kaggle preset's; sizes before it ran without it)")
    ap.add_argument('--seed', type=int, default=0); ap.add_argument('--readme', action='store_true', help='only write the README section')
    a = ap.parse_args(argv)
    name = 'rehearsal_quick' if a.quick else 'rehearsal'; root = Path(a.root)/('quick' if a.quick else '')
    if a.quick and a.budget is None: a.budget = .5
    if a.sia_fracs is None: a.sia_fracs = [.25, .5] if a.quick else [1/16, 1/4]
    if a.threads: torch.set_num_threads(a.threads)
    fn = out_path(name, a.out); res = json.loads(fn.read_text()) if fn.exists() else {}
    if a.readme: return readme(res)
    parts = [s.strip() for s in a.parts.split(',') if s.strip()]; a.full = 'data' in parts or not a.scales
    if bad := set(parts) - {'gen', 'data', 'post', 'runs'}: ap.error(f'unknown part(s) {sorted(bad)}')
    root.mkdir(parents=True, exist_ok=True)
    save = lambda: write(name, {**res, **meta(root=str(root), quick=a.quick)}, a.out)
    for part in parts:
        print(f'== {part}', flush=True); t = time.perf_counter()
        if part == 'runs': part_runs(a, root, res, save)
        elif part == 'gen':            # sets of other runs stay listed
            g = part_gen(a, root); res['gen'] = {**g, 'sets': {**res.get('gen', {}).get('sets', {}), **g['sets']}}
        else: res[part] = dict(globals()[f'part_{part}'](a, root))
        res[part]['wall_s'] = round(sum(o['secs'] for o in res['gen']['sets'].values()) if part == 'gen'    # every set
                                    else time.perf_counter() - t, 1)
        print(f'wrote {save()}', flush=True)
    if not a.quick and not a.out: readme(json.loads(fn.read_text()))
    return res

if __name__ == '__main__': main()
