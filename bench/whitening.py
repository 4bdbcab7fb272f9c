"""Which photos the imprinted whitening neck may see: a held-out photo inside the whitening set is easier to retrieve
than a test photo outside it, so validation flatters a whitened model unless both sit on the same side.

For each set: the run's first split, the frozen ArcFace's features (`arcface_frozen_arch` side by side, from the run's
cache when `--runs` points at finished runs), and known-photo retrieval MAP@5 (no new_whale, `reduce` over each whale's
photos) of held-out photos against the training gallery and of test photos against every known photo, with the
whitening fitted on (a) every train photo, held-out ones included, (b) the training rows only, (c) every train and
test photo. `solution.csv` names the test photos' whales; it is read for this score only.

    python bench/whitening.py --runs /tmp/whale_bench/small_sets/draw* --json bench/results/whitening.json
"""
import argparse, json, sys, time, datetime, platform, os
from pathlib import Path
import numpy as np, pandas as pd, torch, torch.nn.functional as F
from whale_kernel.core import get_preset, NEW_WHALE
from whale_kernel.pipeline import read_photos, make_splits
from whale_kernel.arcface import arcface_model, _frozen_views, _parts
from whale_kernel.backbone import weights_tag
from whale_kernel.train import frozen_size, pca_whitening, cosine_sim, retrieval_aps
from whale_kernel.data import preset_aug

def embed(pv, mu, w):
    "Whitened, L2-normalised embeddings (V,N,D) of pooled views `pv` (V,N,C)"
    return F.normalize((pv - mu) @ w.T, dim=-1)

def known_map(e, q, g, ids, qids):
    "Mean AP@5 of queries `q` (rows of e, whales `qids`) against gallery rows `g` of `e`, views averaged"
    s = cosine_sim(e[:, q].transpose(0, 1).flatten(1), e[:, g].transpose(0, 1).flatten(1), views=e.shape[0])
    return float(retrieval_aps(s, qids, ids[g]).mean())

def one(data, out, p):
    ph = read_photos(data, out, p); split = make_splits(ph, p)[0]
    archs = p.arcface_frozen_arch
    model = arcface_model(archs, p.weights, 2, p.emb_dim, p.arcface_k, pool='avg')
    parts = _parts(model.backbone)
    c = dict(cache_dir=out/'cache', aug_kw=preset_aug(p), seed=p.seed, tags=[weights_tag(a, p.weights) for a in archs],
             sizes=[frozen_size(b, ph.imgs.shape[1:3], p.frozen_res) for b in parts])
    pv, pt = _frozen_views(model.backbone, ph.imgs, 2, c), _frozen_views(model.backbone, ph.crops[0], 2, c)
    ids = split.ids
    sol = pd.read_csv(Path(data)/'solution.csv').set_index('Image').Id.reindex(ph.test.Image).values
    tq = np.flatnonzero(np.isin(sol, split.whales))
    q, g = split.valid_known, split.train_gallery
    sets = {'every train photo': pv[:, :].flatten(0, 1), 'training rows only': pv[:, split.train].flatten(0, 1),
            'train and test photos': torch.cat([pv.flatten(0, 1), pt.flatten(0, 1)])}
    res = {}
    for k, x in sets.items():
        mu, w = pca_whitening(x, p.emb_dim)
        ev, et = embed(pv, mu, w), embed(pt, mu, w)
        both = torch.cat([et, ev[:, split.gallery]], 1)
        res[k] = dict(valid=round(known_map(ev, q, g, ids, ids[q]), 4),
                      test=round(known_map(both, tq, len(pt[0]) + np.arange(len(split.gallery)),
                                           np.r_[sol, ids[split.gallery]], sol[tq]), 4))
    return dict(data=str(data), n_train=len(ids), n_valid_known=len(q), n_test_known=len(tq), **res)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', nargs='+', required=True, help="finished runs' folders (data/ and out/ inside, or a "
                    'competition folder: its features are cached under --scratch)')
    ap.add_argument('--scratch', default='/tmp/whale_bench/whitening')
    ap.add_argument('--json', default='bench/results/whitening.json')
    a = ap.parse_args()
    p = get_preset('cpu'); t0 = time.time(); rows = []
    for r in map(Path, a.runs):
        data, out = (r/'data', r/'out') if (r/'data').is_dir() else (r, Path(a.scratch)/r.name)
        out.mkdir(parents=True, exist_ok=True)
        rows.append(one(data, out, p)); print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    mean = {k: {s: round(float(np.mean([r[k][s] for r in rows])), 4) for s in ('valid', 'test')} for k in keys}
    res = dict(date=str(datetime.date.today()), device=f'cpu: {os.cpu_count()}-core {platform.processor() or "x86_64"}',
               command='python bench/whitening.py ' + ' '.join(sys.argv[1:]), secs=round(time.time() - t0, 1),
               sets=rows, mean=mean)
    Path(a.json).write_text(json.dumps(res, indent=1) + '\n'); print(json.dumps(mean, indent=1))
