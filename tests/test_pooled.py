"Choices made on repeated splits: the splits themselves, pooled evidence against a lucky split, the blend's members, the threshold's prior"
import numpy as np, pandas as pd, pytest
from types import SimpleNamespace
from whale_kernel.core import get_preset
from whale_kernel.ensemble import ModelScores, ScoreMatrix, shrunk, blend
from whale_kernel.metrics import ratio_threshold, query_aps
import whale_kernel.pipeline as P
from whale_kernel.pipeline import ModelSpec, Split, valid_splits, n_splits, pool, keep_best, gate, blend_members

WH = [f'w{i}' for i in range(10)]

def _scores(right, name='toy', r=0, info=None, test_seed=0):
    "10 held-out photos (photo i shows whale i): the true whale first where `right`, else second behind whale i+1"
    v = np.full((10, 10), 0.1, np.float32)
    for i in range(10): v[i, i] = 0.8 if right[i] else 0.6; v[i, (i + 1) % 10] = 0.7
    t = np.random.default_rng(test_seed).random((4, 10)).astype(np.float32)
    return ModelScores.fit(name, ScoreMatrix([f'v{r}_{i}' for i in range(10)], WH, v), WH,
                           ScoreMatrix([f't{j}' for j in range(4)], WH, t), info=dict(info or {}))

def test_lucky_split_does_not_decide():
    "An extra that wins clearly on one split, by luck, and loses on three more: one split keeps it, the pooled four do not"
    plain = [_scores([1]*6 + [0]*4, r=r) for r in range(4)]
    cand = [_scores([1]*10 if r == 0 else [1]*2 + [0]*8, r=r, info=dict(rerank=1.)) for r in range(4)]
    assert keep_best('toy', plain[0], [cand[0]], 1.) is cand[0]            # the lucky split alone: kept
    splits = [SimpleNamespace(vnames=[f'p{i}' for i in range(10)]) for _ in range(4)]
    pp, pc = pool('toy', plain, splits), pool('toy', cand, splits, info=dict(rerank=1.))
    assert len(pp.truth) == 40 and pp.valid.names[10] == 'p0@1'           # every split's rows, renamed after the first
    assert keep_best('toy', pp, [pc], 1.) is pp                            # pooled: not kept
    np.testing.assert_allclose(pp.test.values, sum(m.test.values for m in plain)/4, rtol=1e-6)

def _comp(n_whales=12, photos=(2, 3), n_new=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f'w{i}' for i in range(n_whales) for _ in range(photos[i % len(photos)])] + ['new_whale']*n_new
    return pd.DataFrame({'Image': [f'{i}.jpg' for i in range(len(ids))], 'Id': rng.permutation(ids)})

def test_valid_splits_deterministic_and_every_whale_takes_a_turn():
    df = _comp()
    a, b, c = valid_splits(df, 4, seed=1), valid_splits(df, 4, seed=1), valid_splits(df, 4, seed=2)
    assert len(a) == 4 and all((x == y).all() for x,y in zip(a, b))          # the same for a seed
    assert any((x != y).any() for x,y in zip(a, c))                           # another seed, other splits
    np.testing.assert_array_equal(a[0], P.valid_split(df, seed=1))            # the first is the run's own split
    held = lambda m: set(df.Id[m]) - {'new_whale'}
    assert held(a[0]).isdisjoint(held(a[1])) and held(a[0]) | held(a[1]) == set(df.Id) - {'new_whale'}
    for m in a:                                     # one photo per whale, never the last one of it, new_whale distractors
        vc = df.Id[m].value_counts(); assert (vc.drop('new_whale') == 1).all() and vc['new_whale'] > 0
    three = df.Id.map(df.Id.value_counts()) == 3    # a whale with three photos shows another one on its second turn
    turns = [set(df.Image[m & three]) for m in a]
    assert not (turns[0] & turns[2]) or not (turns[1] & turns[3])

def test_n_splits_rule():
    assert n_splits(50) == 1 and n_splits(200) == 1 and n_splits(0) == 1     # enough (or nothing to repeat)
    assert n_splits(20) == 3 and n_splits(10) == 5 and n_splits(3) == 5      # to 50 pooled, at most 5
    assert n_splits(10, enough=30, most=2) == 2

def _sim(model, q, g):
    q, g = (np.asarray(o, np.float32) for o in (q, g))
    q, g = (o/np.linalg.norm(o, axis=1, keepdims=True).clip(1e-9) for o in (q, g))
    return q @ g.T

def _feats(model, imgs, tta=True, idxs=None): return np.asarray(imgs if idxs is None else imgs[np.asarray(idxs)], np.float32)

def test_score_model_pools_repeated_splits(monkeypatch):
    "`score_model` on three splits: fitted on each, held-out rows stacked, test scores averaged, the same twice"
    fits = []
    spec = ModelSpec('toy', lambda imgs, ids, train, **kw: fits.append(len(train)), _feats, _sim)
    monkeypatch.setitem(P.MODELS, 'toy', spec)
    rng = np.random.default_rng(0)
    df = _comp(n_whales=10, photos=(2, 3), n_new=8)
    who = pd.factorize(df.Id)[0]; centres = rng.standard_normal((who.max() + 1, 16))
    imgs = centres[who] + 0.5*rng.standard_normal((len(df), 16)); test = centres[:6] + 0.5*rng.standard_normal((6, 16))
    masks = valid_splits(df, 3, seed=0)
    splits = [Split(df.Id.values, m, list(df.Image[m]), [f't{i}' for i in range(6)]) for m in masks]
    p = get_preset('cpu', pseudo=False, rerank_beta=(1.,), thr_prior=0.)
    ms = P.score_model('toy', imgs, splits, test, p)
    assert len(fits) == 3 and ms.info['splits'] == 3
    assert ms.valid.names == [n if r == 0 else f'{n}@{r}' for r,s in enumerate(splits) for n in s.vnames]
    assert ms.truth == [t for s in splits for t in s.ids[s.valid]]
    one = [P.score_model('toy', imgs, s, test, p) for s in splits]    # test scores: the mean of each split's (extras aside)
    if not ms.info.get('rerank'):
        np.testing.assert_allclose(ms.test.values, sum(m.test.values for m in one)/3, rtol=1e-5)
    again = P.score_model('toy', imgs, splits, test, p)
    np.testing.assert_array_equal(again.valid.values, ms.valid.values); assert again.thr == ms.thr

def test_gate_keeps_out_what_does_not_clearly_beat_the_knn():
    knn = _scores([1]*6 + [0]*4, 'knn')
    same = _scores([1]*5 + [0]*4 + [1], 'arcface')          # as good, on other photos: no clear gain
    better = _scores([1]*10, 'siamese')                      # four photos better, none worse: a clear gain
    ins, out = gate([knn, same, better], 1.)
    assert [m.name for m in ins] == ['knn', 'siamese'] and set(out) == {'arcface'} and out['arcface'][0] == 0
    ens = blend_members([knn, same], 1.)                     # nothing but the kNN passes: a one-member blend
    assert ens.name == 'blend(knn)' and ens.info['weights'] == {'knn': 1., 'arcface': 0.}
    np.testing.assert_array_equal(ens.pt, knn.pt); assert ens.thr == knn.thr
    assert ens.info['left_out']['arcface']['gain'] == 0
    assert gate([same, better], 1.)[0] == [same, better]      # without a kNN to compare with, nothing is gated

def test_gate_at_zero_keeps_whatever_validation_ranks_above_the_knn():
    "The run's bar (`gate_z` = 0): a learner joins when its validation gain is positive at all, however noisy"
    knn = _scores([1]*6 + [0]*4, 'knn')
    slight = _scores([1]*7 + [0]*3, 'arcface')              # one photo better: a gain inside its noise
    worse = _scores([1]*5 + [0]*5, 'siamese')
    ins, out = gate([knn, slight, worse], 0.)
    assert [m.name for m in ins] == ['knn', 'arcface'] and set(out) == {'siamese'} and out['siamese'][0] < 0
    assert set(gate([knn, slight, worse], 2.)[1]) == {'arcface', 'siamese'}
    assert get_preset('cpu').gate_z == 0

def test_threshold_prior():
    rng = np.random.default_rng(0)
    pv, pt = rng.random((20, 10)), rng.random((50, 10))
    truth = [WH[i % 10] for i in range(14)] + ['new_whale']*6
    assert shrunk(0.3, 0.5, pv, pt, WH, truth, 0.) == (0.3, 0.5)          # no prior: as searched
    t, m = shrunk(0.3, 0.5, pv, pt, WH, truth, 20.)                       # n = 20 photos, prior 20: halfway
    assert t == pytest.approx(0.5*0.3 + 0.5*ratio_threshold(pt))
    assert m == pytest.approx(float(query_aps(pv, WH, truth, t).mean()))
    assert shrunk(0.3, 0.5, pv, pt, WH, truth, 1e9)[0] == pytest.approx(ratio_threshold(pt))

def _toy_set(n_whales=20, n_new=12, n_test=6, seed=0, noise=0.3):
    "Features of a toy competition: each whale a random centre, photos near it; test photos of the first `n_test` whales"
    rng = np.random.default_rng(seed)
    df = _comp(n_whales=n_whales, photos=(2, 3), n_new=n_new, seed=seed)
    who = pd.factorize(df.Id)[0]; centres = rng.standard_normal((who.max() + 1, 16))
    imgs = centres[who] + noise*rng.standard_normal((len(df), 16))
    test = centres[who[:n_test]] + noise*rng.standard_normal((n_test, 16))
    return df, imgs, test

def test_pooled_twins_find_copies_of_new_whale_photos(monkeypatch, wklog):
    "Too few known held-out photos on any one split to bound the twins' cost, enough pooled: copies of new_whale photos go new_whale first, no known held-out photo moves"
    from whale_kernel.ensemble import to_prob
    spec = ModelSpec('toy', lambda *a, **kw: None, _feats, _sim); monkeypatch.setitem(P.MODELS, 'toy', spec)
    df, imgs, test = _toy_set()
    nw = np.flatnonzero(df.Id.values == 'new_whale')[:3]
    t2 = np.concatenate([test, imgs[nw]]); tn = [f't{i}' for i in range(len(t2))]
    splits = [Split(df.Id.values, m, list(df.Image[m]), tn) for m in valid_splits(df, 3, seed=0)]
    p = get_preset('cpu', pseudo=False, rerank=False, thr_prior=0.)
    need = int(np.ceil(1/p.new_twins - 1 - 1e-9))
    assert all(len(s.valid_known) < need for s in splits) and sum(len(s.valid_known) for s in splits) >= need
    one = P.score_model('toy', imgs, splits[0], t2, p)
    assert one.info['new_twins'] is None and 'twins not looked for' in wklog.text
    ms = P.score_model('toy', imgs, splits, t2, p)
    off = P.score_model('toy', imgs, splits, t2, get_preset('cpu', pseudo=False, rerank=False, thr_prior=0., new_twins=0.))
    tw = ms.info['new_twins']; copies = np.arange(len(test), len(t2))
    assert tw is not None and tw['test'] >= len(copies) and (ms.pt[copies].max(1) < ms.thr).all()
    assert f"of 3 splits" in wklog.text
    known = np.array([t != 'new_whale' for t in ms.truth])
    np.testing.assert_allclose(ms.pv[known], to_prob(off.valid.values, off.ab)[known])    # the cut is their largest lean
    assert ms.map_valid >= off.map_valid

def test_pooled_round_trains_every_split_and_is_judged_pooled(monkeypatch, wklog):
    "The pseudo-label round runs once per split on that split's confident test photos; the pooled held-out photos decide"
    calls = []
    def pfit(model, imgs, ids, train, timgs, rows, named, **kw):
        calls.append((len(train), list(rows), list(named))); return 'round'
    def feats(model, imgs, tta=True, idxs=None):      # the round's model sees every photo a little differently
        f = _feats(model, imgs, tta, idxs)
        return f + (0.5*np.random.default_rng(len(f)).standard_normal(f.shape) if model == 'round' else 0)
    spec = ModelSpec('toy', lambda *a, **kw: 'first', feats, _sim, pseudo_fit=pfit); monkeypatch.setitem(P.MODELS, 'toy', spec)
    df, imgs, test = _toy_set(noise=0.8)          # held-out photos that the first model gets partly wrong
    splits = [Split(df.Id.values, m, list(df.Image[m]), [f't{i}' for i in range(len(test))]) for m in valid_splits(df, 3, seed=0)]
    sm = lambda z: P.score_model('toy', imgs, splits, test, get_preset('cpu', pseudo=False, rerank=False, thr_prior=0.,
                                                                      new_twins=0., pseudo_conf=(0.,), pseudo_round=0.5, select_z=z))
    kept = sm(-1e9)                                   # any pooled gain, or loss within its noise, clears this bar
    assert len(calls) == 3 and [c[0] for c in calls] == [len(s.train) for s in splits]
    assert all(set(n) <= set(s.whales) and len(r) for (_, r, n), s in zip(calls, splits))
    r = kept.info['pseudo_round']
    assert r['per_split'] == [len(c[1]) for c in calls] and r['n'] == sum(r['per_split']) and 'on 3 splits' in wklog.text
    assert len(kept.truth) == sum(len(s.valid) for s in splits)       # judged on every split's held-out photos
    calls.clear(); off = sm(1e9)
    assert len(calls) == 3 and off.info['pseudo_round'] is None and 'not kept' in wklog.text
    assert not np.allclose(off.test.values, kept.test.values)

def _fitted(kept_epoch, gains, base=0.5, seed=0):
    "A split model as `fit_stages` leaves it: a one-weight model, its selector's step 0 (weight 0) and best epoch 2 (weight 1)"
    import torch
    m = SimpleNamespace(model=torch.nn.Linear(1, 1, bias=False))
    b = np.full(len(gains), base); e = b + np.asarray(gains, float)
    sel = SimpleNamespace(best_i=2, hist=[b, b, e], base=b, best_sd={'weight': torch.ones(1, 1)},
                          base_sd={'weight': torch.zeros(1, 1)}, curve=np.array([b.mean(), b.mean(), e.mean()]))
    m.selector, m.kept = sel, ('epoch 2' if kept_epoch else 'step 0') + ' on lite0'
    m.model.load_state_dict(sel.best_sd if kept_epoch else sel.base_sd); m.model.requires_grad_(False)
    return m

def test_pooled_verdict_overrules_a_lucky_split(wklog):
    "One split's best epoch wins on its ten photos by luck and loses on two others': every split keeps step 0"
    lucky = _fitted(True, [0.5]*10)                       # +0.5 on each of its ten photos: kept on its own
    rest = [_fitted(False, [-0.3]*8 + [0.2]*2) for _ in range(2)]
    assert P.beats(lucky.selector.hist[2], lucky.selector.base)[0]
    ms = [lucky] + rest
    assert P.pooled_verdict('toy', ms, 1.) == [0]
    assert [m.kept for m in ms] == ['step 0 on lite0']*3 and float(lucky.model.weight) == 0.
    assert 'step 0 everywhere (split 0 switched)' in wklog.text

def test_pooled_verdict_keeps_what_only_the_pooled_photos_can_see(wklog):
    "A gain of 0.1 a photo too noisy to clear one split's ten photos clears thirty: every split keeps its best epoch"
    g = [0.45, -0.25]*5                                    # mean +0.1, SE 0.12 on ten photos: no split keeps it alone
    ms = [_fitted(False, g) for _ in range(3)]
    assert not P.beats(ms[0].selector.hist[2], ms[0].selector.base)[0]
    assert P.pooled_verdict('toy', ms, 1.) == [0, 1, 2]
    assert all(m.kept == 'epoch 2 on lite0' and float(m.model.weight) == 1. for m in ms)
    assert P.pooled_verdict('toy', ms, 1.) == []           # settled: a second look changes nothing
    assert P.pooled_verdict('toy', ms[:1], 1.) == []       # one split decides for itself

def test_pooled_verdict_leaves_models_of_different_kinds_alone():
    "A kept fine-tune, a model without a selector, or splits on different backbones: no common verdict"
    ft = _fitted(False, [0.5]*10); ft.kept = 'step 0, then fine-tune epoch 4'
    assert P.pooled_verdict('toy', [ft, _fitted(False, [0.5]*10)], 1.) == []
    assert P.pooled_verdict('toy', [SimpleNamespace(kept='-'), _fitted(False, [0.5]*10)], 1.) == []
    other = _fitted(False, [0.5]*10); other.kept = 'step 0 on lite1'
    assert P.pooled_verdict('toy', [_fitted(False, [0.5]*10), other], 1.) == []

def test_score_model_rescores_the_splits_the_pooled_verdict_switches(monkeypatch, wklog):
    "Through `score_model`: split 0's lucky epoch is overruled, and its held-out photos are scored by its step 0"
    df, imgs, test = _toy_set()
    splits = [Split(df.Id.values, m, list(df.Image[m]), [f't{i}' for i in range(len(test))])
              for m in valid_splits(df, 3, seed=0)]
    made = []
    def fit(imgs, ids, train, valid_idx=None, **kw):
        m = _fitted(len(made) == 0, [0.5]*len(valid_idx) if not made else [-0.3]*len(valid_idx)); made.append(m)
        return m
    def feats(model, imgs, tta=True, idxs=None):          # the weight moves every photo: step 0 and epoch 2 differ
        return _feats(model, imgs, tta, idxs) + 3*float(model.model.weight)
    monkeypatch.setitem(P.MODELS, 'toy', ModelSpec('toy', fit, feats, _sim))
    p = get_preset('cpu', pseudo=False, rerank=False, thr_prior=0., new_twins=0.)
    ms = P.score_model('toy', imgs, splits, test, p)
    assert ms.info['kept'] == 'step 0 on lite0' and 'split 0 switched' in wklog.text
    def one(kept_epoch):                                  # split 0 alone, its model at epoch 2 or at step 0
        monkeypatch.setitem(P.MODELS, 'toy', ModelSpec('toy', lambda *a, **k: _fitted(kept_epoch, [0.]), feats, _sim))
        return P.score_model('toy', imgs, splits[0], test, p).valid.values
    n0 = len(splits[0].valid)
    np.testing.assert_allclose(ms.valid.values[:n0], one(False), rtol=1e-6)
    assert not np.allclose(ms.valid.values[:n0], one(True))
