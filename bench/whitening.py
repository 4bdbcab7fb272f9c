"""Which photos the imprinted whitening neck is fitted on, and what validation then says about test.

A frozen ArcFace or Siamese at step 0 is a PCA whitening of pooled backbone features (`pca_whitening`, `emb_dim`
directions). With fewer photos than feature dimensions, a photo inside the whitening set keeps directions of its own
that the whitening blows up, so its cosine to every other photo drops; a photo outside it does not. Held-out photos
inside the set and test photos outside it then score on different scales, and a new_whale threshold chosen on
validation misplaces new_whale on test.

For each set (finished runs' folders with `data/` and `out/`, or competition folders): the run's first split, the frozen
ArcFace's features (`arcface_frozen_arch` side by side, read from the run's cache when there is one), and, per
whitening set: the median best-match cosine of held-out and of test photos (known whales and new_whale apart), and
known-photo retrieval MAP@5 (held-out photos against the training gallery, test photos against every known photo).
Whitening sets: every train photo (held-out ones in), the training rows only, every train and test photo.
`solution.csv` names the test photos' whales and is read for these scores only.

    python bench/whitening.py --runs /tmp/whale_bench/small_sets/draw{0..9} ../shared/data/dogfaces
"""
import argparse, sys
from pathlib import Path
import numpy as np, pandas as pd, torch, torch.nn.functional as F
from _util import meta, write, TMP
from whale_kernel.core import get_preset
from whale_kernel.data import preset_aug
from whale_kernel.pipeline import read_photos, make_splits
from whale_kernel.arcface import arcface_model, _frozen_views, _parts
from whale_kernel.backbone import weights_tag
from whale_kernel.train import frozen_size, pca_whitening, cosine_sim, retrieval_aps

def embed(pv, mu, w):
    "Whitened, L2-normalised embeddings (V,N,D) of pooled views `pv` (V,N,C)"
    return F.normalize((pv - mu) @ w.T, dim=-1)

def best(e, q, g) -> np.ndarray:
    "Each query row `q`'s best cosine to gallery rows `g` of embeddings `e` (V,N,D), views averaged"
    return cosine_sim(e[:, q].transpose(0, 1).flatten(1), e[:, g].transpose(0, 1).flatten(1), views=e.shape[0])

def one(data:Path, out:Path, p) -> dict:
    ph = read_photos(data, out, p); split = make_splits(ph, p)[0]
    archs = p.arcface_frozen_arch
    model = arcface_model(archs, p.weights, 2, p.emb_dim, p.arcface_k, pool='avg')
    c = dict(cache_dir=out/'cache', aug_kw=preset_aug(p), seed=p.seed, tags=[weights_tag(a, p.weights) for a in archs],
             sizes=[frozen_size(b, ph.imgs.shape[1:3], p.frozen_res) for b in _parts(model.backbone)])
    pv, pt = _frozen_views(model.backbone, ph.imgs, 2, c), _frozen_views(model.backbone, ph.crops[0], 2, c)
    ids, n_test = split.ids, pt.shape[1]
    sol = pd.read_csv(data/'solution.csv').set_index('Image').Id.reindex(ph.test.Image).values
    allid = np.r_[sol, ids]                                     # test rows first, then the train rows
    tk = np.isin(sol, split.whales)
    vk = np.isin(ids[split.valid], split.whales)
    sets = {'every train photo': pv.flatten(0, 1), 'training rows only': pv[:, split.train].flatten(0, 1),
            'train and test photos': torch.cat([pv.flatten(0, 1), pt.flatten(0, 1)])}
    res = {}
    for k, x in sets.items():
        mu, w = pca_whitening(x, p.emb_dim)
        e = torch.cat([embed(pt, mu, w), embed(pv, mu, w)], 1)
        sv = best(e, n_test + split.valid, n_test + split.train_gallery)
        st = best(e, np.arange(n_test), n_test + split.gallery)
        med = lambda s, m: round(float(np.median(s.max(1)[m])), 3)
        res[k] = dict(best_cos=dict(valid_known=med(sv, vk), test_known=med(st, tk), valid_new=med(sv, ~vk),
                                    test_new=med(st, ~tk)),
                      known_map=dict(valid=round(float(retrieval_aps(sv[vk], ids[split.valid][vk],
                                                                     allid[n_test + split.train_gallery]).mean()), 4),
                                     test=round(float(retrieval_aps(st[tk], sol[tk],
                                                                    allid[n_test + split.gallery]).mean()), 4)))
    return dict(data=str(data), n_train=len(ids), n_valid_known=int(vk.sum()), n_test_known=int(tk.sum()), **res)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', nargs='+', required=True)
    a = ap.parse_args(argv)
    p = get_preset('cpu'); rows = []
    for r in map(Path, a.runs):
        data, out = (r/'data', r/'out') if (r/'data').is_dir() else (r, TMP/'whitening'/r.name)
        out.mkdir(parents=True, exist_ok=True)
        rows.append(one(data, out, p)); print(rows[-1], flush=True)
    keys = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    mean = {k: {g: {s: round(float(np.mean([r[k][g][s] for r in rows])), 4) for s in rows[0][k][g]}
                for g in rows[0][k]} for k in keys}
    res = dict(command='python bench/whitening.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
               sets=rows, mean=mean)
    write('whitening', {**meta(), **res}); print(mean)

if __name__ == '__main__': main()
