"`score_model`'s stages, one at a time, on small synthetic feature matrices: no model is fitted"
import logging
import numpy as np, pytest
from whale_kernel.core import get_preset
from whale_kernel.ensemble import ModelScores, ScoreMatrix
from whale_kernel.metrics import reduce_by_id
from whale_kernel.core import TimeBudget
import whale_kernel.pipeline as P
from whale_kernel.pipeline import ModelSpec, Split, score_views, extras, keep_best, new_whale_twins, pseudo_round, fit_model, _aps

def _sim(model, q, g):
    "Cosine similarity of feature rows (numpy), the stand-in model's similarity"
    q, g = (np.asarray(o, np.float32) for o in (q, g))
    q, g = (o/np.linalg.norm(o, axis=1, keepdims=True).clip(1e-9) for o in (q, g))
    return q @ g.T

def _feats(model, imgs, tta=True, idxs=None): return np.asarray(imgs if idxs is None else imgs[np.asarray(idxs)], np.float32)

SPEC = ModelSpec('toy', None, _feats, _sim)

@pytest.fixture
def toy():
    "Six whales × 3 photos and 4 new_whale photos as noisy copies of a centre each; one photo of every whale held out, and 2 new_whales"
    rng = np.random.default_rng(0)
    ids = np.array([f'w{i}' for i in range(6) for _ in range(3)] + ['new_whale']*4, dtype=object)
    centres = rng.standard_normal((10, 16)); who = np.r_[np.repeat(np.arange(6), 3), 6 + np.arange(4)]
    imgs = centres[who] + 0.6*rng.standard_normal((len(ids), 16))
    is_valid = np.zeros(len(ids), bool); is_valid[[0, 3, 6, 9, 12, 15, 18, 19]] = True
    test = centres[[0, 1, 2, 3, 7, 8]] + 0.6*rng.standard_normal((6, 16))     # 4 known whales, 2 new_whale lookalikes
    split = Split(ids, is_valid, [f'v{i}' for i in range(is_valid.sum())], [f't{i}' for i in range(6)])
    return imgs, test, split

def test_split_rows(toy):
    _, _, sp = toy
    assert sp.whales == [f'w{i}' for i in range(6)] and list(sp.valid_known) == [0, 3, 6, 9, 12, 15]
    assert set(sp.train_gallery) == set(range(18)) - {0, 3, 6, 9, 12, 15} and list(sp.gallery) == list(range(18))
    assert list(sp.new) == [18, 19, 20, 21] and list(sp.train_new) == [20, 21]
    assert list(sp.rows) == list(range(20))                   # gallery and held-out photos: the train new_whales are not compared
    np.testing.assert_array_equal(sp.count(sp.train_gallery), [2]*6)

def test_score_views_plain_and_reranked(toy):
    imgs, test, sp = toy
    sc = score_views(SPEC, None, imgs, [test, test + 0.01], sp, get_preset('cpu', rerank_beta=(0.5, 1.)))
    assert list(sc.valid) == list(sc.test) == [0., 0.5, 1.]
    want = reduce_by_id(_sim(None, imgs[sp.valid], imgs[sp.train_gallery]), sp.ids[sp.train_gallery], sp.whales, 'max')[0]
    np.testing.assert_allclose(sc.valid[0.], want)                                       # against the training gallery only
    crops = [reduce_by_id(_sim(None, t, imgs[sp.gallery]), sp.ids[sp.gallery], sp.whales, 'max')[0] for t in (test, test + 0.01)]
    np.testing.assert_allclose(sc.test[0.], (crops[0] + crops[1])/2, rtol=1e-6)          # the crops averaged
    assert not np.allclose(sc.test[1.], sc.test[0.])                                       # re-ranking moves scores
    no = score_views(SPEC, None, imgs, [test], sp, get_preset('cpu', rerank=False))
    assert list(no.valid) == [0.]

def _make(sp):
    return lambda v, t, more: ModelScores.fit('toy', ScoreMatrix(sp.vnames, sp.whales, v), list(sp.ids[sp.valid]),
                                              ScoreMatrix(sp.tnames, sp.whales, t), 0., dict(more))

def test_extras_are_the_candidates_asked_for(toy):
    imgs, test, sp = toy
    p = get_preset('cpu', rerank_beta=(1.,), pseudo_conf=(0.,))
    sc = score_views(SPEC, None, imgs, [test], sp, p)
    plain, cands = extras(SPEC, sc, sp, p, _make(sp))
    np.testing.assert_allclose(plain.valid.values, sc.valid[0.])
    assert [c.info.get('rerank') for c in cands[:1]] == [1.] and cands[1].info['pseudo']['n'] > 0    # confidence 0: every photo above thr
    q = get_preset('cpu', rerank=False, pseudo=False)            # re-ranking strengths come from what `score_views` computed
    _, none = extras(SPEC, score_views(SPEC, None, imgs, [test], sp, q), sp, q, _make(sp))
    assert none == []

def _scores(aps, name='m'):
    "A `ModelScores` whose per-photo AP@5 on validation are `aps` (1: the right whale first, 0: not among the five)"
    n = len(aps); ids = [f'w{i}' for i in range(6)]; truth = [ids[i % 6] for i in range(n)]
    v = np.full((n, 6), 0.1, np.float32)
    for i,a in enumerate(aps): v[i, i % 6] = 0.9 if a else 0.05
    return ModelScores(name, ScoreMatrix([f'v{i}' for i in range(n)], ids, v), truth, ScoreMatrix(['t0'], ids, np.zeros((1, 6))),
                       None, 0., float(np.mean(aps)), 0., {})

def test_keep_best_wants_more_than_luck(caplog):
    "A candidate ahead by one photo of ten is within the noise (a paired gain of 1 SE), and not kept at 2 SE; one ahead on most photos is"
    plain = _scores([1, 1, 1, 0, 0, 0, 1, 1, 1, 0])
    lucky = _scores([1, 1, 1, 1, 0, 0, 1, 1, 1, 0], 'lucky')
    assert _aps(lucky).mean() > _aps(plain).mean()
    assert keep_best('m', plain, [lucky], z=2.) is plain
    clear = _scores([1]*10, 'clear')
    assert keep_best('m', plain, [lucky, clear], z=2.) is clear
    assert keep_best('m', plain, [], z=1.) is plain

def test_new_whale_twins_flags_copies_of_new_whale_photos(toy):
    imgs, test, sp = toy
    p = get_preset('cpu', rerank=False, pseudo=False, new_twins=0.2)                   # 4 known validation photos needed
    t2 = np.concatenate([test, imgs[sp.train_new]])                                      # two test photos: copies of new_whale ones
    sp2 = Split(sp.ids, sp.is_valid, sp.vnames, sp.tnames + ['twin0', 'twin1'])
    sc = score_views(SPEC, None, imgs, [t2], sp2, p)
    plain, _ = extras(SPEC, sc, sp2, p, _make(sp2))
    ms = new_whale_twins(SPEC, sc, plain, imgs, sp2, p)
    assert (ms.pt[-2:].max(1) < ms.thr).all() and ms.info['new_twins']['test'] >= 2
    known = np.array([t != 'new_whale' for t in ms.truth])
    np.testing.assert_allclose(ms.pv[known], plain.pv[known])                             # no known validation photo moves
    few = new_whale_twins(SPEC, sc, plain, imgs, sp2, get_preset('cpu', new_twins=0.1))  # 9 needed, 6 there: nothing moves
    assert few is plain

def test_fit_model_trains_on_the_training_rows_and_chooses_on_known_held_out_ones(toy, monkeypatch):
    imgs, _, sp = toy; seen = {}
    def fit(imgs, ids, train, valid_idx, preset, **kw): seen.update(ids=ids, train=train, valid=valid_idx, **kw); return 'model'
    monkeypatch.setitem(P.MODELS, 'toy', ModelSpec('toy', fit, _feats, _sim))
    assert fit_model('toy', imgs, sp, get_preset('cpu'), reserve=5.) == 'model'
    assert list(seen['train']) == list(sp.train) and list(seen['valid']) == [0, 3, 6, 9, 12, 15]   # no new_whale to choose on
    assert seen['reserve'] == 5. and seen['ids'] is sp.ids

def test_pseudo_round_trains_on_confident_test_photos_and_keeps_only_a_clear_gain(toy):
    imgs, test, sp = toy
    p = get_preset('cpu', rerank=False, pseudo_conf=(0.,), select_z=2.)
    calls = []
    def pseudo_fit(model, imgs, ids, train, crop, rows, named, **kw): calls.append((rows, named)); return 'second'
    spec = ModelSpec('toy', None, _feats, _sim, None, pseudo_fit)
    sc = score_views(spec, None, imgs, [test], sp, p); make = _make(sp)
    plain, cands = extras(spec, sc, sp, p, make)
    half = _scores([0, 1]*(len(plain.truth)//2), 'first')            # the model kept so far: half its photos wrong
    for aps, kept in (([1]*len(plain.truth), True), ([1, 1, 0, 1, 0, 1, 0, 0], False)):   # a clear gain; one photo's
        second = _scores(aps, 'second')
        r = pseudo_round(spec, sc, sp, p, kept=half, plain=plain, cands=cands, imgs=imgs, crops=[test],
                         rescore=lambda model, extra: (second, [], 'sc2'))
        assert (r is not None and r[0] is second and r[1] == 'sc2') if kept else r is None
    rows, named = calls[0]
    top = np.asarray(sp.whales, dtype=object)[sc.test_train.argmax(1)]
    assert len(rows) and list(named) == list(top[rows])          # named by the training gallery, as validation would be
    late = TimeBudget(0.5); late.start -= 25                       # 5 s left: no round, nothing trained
    assert pseudo_round(spec, sc, sp, p, kept=plain, plain=plain, cands=cands, imgs=imgs, crops=[test],
                        rescore=None, budget=late) is None and len(calls) == 2

def test_a_fine_tuned_model_gets_its_round_only_where_the_preset_asks(wklog):
    "The `cpu` preset rounds frozen models only (a thawed round is a second fine-tune plus a full rescoring); the GPU presets both"
    from types import SimpleNamespace
    from whale_kernel.pipeline import _round_due
    spec = SimpleNamespace(name='arcface', pseudo_fit=lambda *a, **k: None); nofit = SimpleNamespace(name='x', pseudo_fit=None)
    frozen, thawed, plain = SimpleNamespace(wk={'frozen': True}), SimpleNamespace(wk={'frozen': False}), SimpleNamespace()
    cpu, kaggle = get_preset('cpu'), get_preset('kaggle')
    assert not cpu.pseudo_round_thawed and kaggle.pseudo_round_thawed and get_preset('full').pseudo_round_thawed
    assert [_round_due(spec, m, cpu) for m in (frozen, thawed, plain)] == [True, False, True]
    assert [_round_due(spec, m, kaggle) for m in (frozen, thawed, plain)] == [True, True, True]
    assert not _round_due(spec, frozen, get_preset('cpu', pseudo_round=0.)) and not _round_due(nofit, frozen, cpu)
    assert 'no pseudo-label round after a kept fine-tune' in wklog.text
