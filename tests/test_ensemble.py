"Score matrices, calibration and the power-mean blend (`whale_kernel.ensemble`)"
import numpy as np, pytest
from whale_kernel.data import NEW_WHALE
from whale_kernel.metrics import best_threshold, query_aps
from whale_kernel.ensemble import ScoreMatrix, calibrate, to_prob, ModelScores, power_mean, blend, topk_mean, csls

IDS = [f'w{i:02d}' for i in range(15)]

def _truth(n=40, seed=0):
    "Validation answers: known whales and about a quarter new_whale"
    rng = np.random.default_rng(seed)
    return [NEW_WHALE if rng.random() < .25 else IDS[rng.integers(len(IDS))] for _ in range(n)]

def _scores(truth, signal, seed, scale=1., shift=0.):
    "Scores (Q, n_ids): noise, plus `signal` on each row's true whale; then `scale`·s + `shift` (uncalibrated)"
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 1, (len(truth), len(IDS)))
    for i,t in enumerate(truth):
        if t != NEW_WHALE: s[i, IDS.index(t)] += signal
    return (s*scale + shift).astype(np.float32)

def _model(name, signal, seed, scale=1., shift=0., truth=None, ids=IDS):
    truth = _truth() if truth is None else truth
    vn, tn = [f'v{i}.jpg' for i in range(len(truth))], [f't{i}.jpg' for i in range(30)]
    v, t = _scores(truth, signal, seed, scale, shift), _scores(_truth(30, seed=9), signal, seed + 100, scale, shift)
    pos = [IDS.index(k) for k in ids]
    return ModelScores.fit(name, ScoreMatrix(vn, ids, v[:, pos]), truth, ScoreMatrix(tn, ids, t[:, pos]))

def _permuted(m, seed=0):
    "`m` with its ids (and score columns) in another order"
    p = np.random.default_rng(seed).permutation(len(m.valid.ids))
    ids = [m.valid.ids[i] for i in p]
    return ModelScores(m.name, ScoreMatrix(m.valid.names, ids, m.valid.values[:, p]), m.truth,
                       ScoreMatrix(m.test.names, ids, m.test.values[:, p]), m.ab, m.thr, m.map_valid)

# --- ScoreMatrix -------------------------------------------------------------------------------------------------------

def test_score_matrix_align():
    s = ScoreMatrix(['a.jpg', 'b.jpg'], ['w1', 'w2', 'w3'], [[1, 2, 3], [4, 5, 6]])
    a = s.align(['w3', 'w9', 'w1'], names=['b.jpg', 'a.jpg'], fill=-1)
    assert a.ids == ['w3', 'w9', 'w1'] and a.names == ['b.jpg', 'a.jpg']
    np.testing.assert_array_equal(a.values, [[6, -1, 4], [3, -1, 1]])
    assert np.isneginf(s.align(['w0']).values).all()
    with pytest.raises(KeyError, match='c.jpg'): s.align(s.ids, names=['c.jpg'])
    with pytest.raises(ValueError, match='do not match'): ScoreMatrix(['a.jpg'], ['w1', 'w2'], [[1, 2, 3]])

def test_score_matrix_save_load(tmp_path):
    s = ScoreMatrix(['a.jpg', 'ü ß.jpg'], ['w_1', 'new id'], np.array([[.1, -np.inf], [2., 3.]]))
    s.save(tmp_path/'s.npz')
    r = ScoreMatrix.load(tmp_path/'s.npz')
    assert r.names == s.names and r.ids == s.ids and all(type(o) is str or isinstance(o, str) for o in r.names + r.ids)
    np.testing.assert_array_equal(r.values, s.values)
    assert r.values.dtype == np.float32

# --- calibration -------------------------------------------------------------------------------------------------------

def test_calibrate_and_to_prob():
    truth = _truth()
    raw = _scores(truth, 3., 0)
    a, b = calibrate(raw, IDS, truth)
    a2, b2 = calibrate(raw*10 - 5, IDS, truth)                   # the same scores on another scale: the same probabilities
    assert a > 0 and np.allclose(to_prob(raw, (a, b)), to_prob(raw*10 - 5, (a2, b2)), atol=1e-3)
    p = to_prob(raw, (a, b))
    assert p.dtype == np.float32 and np.argsort(p, 1, kind='stable').tolist() == np.argsort(raw, 1, kind='stable').tolist()
    np.testing.assert_allclose(to_prob([[0., 1., -np.inf]], (2., -1.)), [[1/(1 + np.e), 1/(1 + np.exp(-1)), 0.]], rtol=1e-6)
    np.testing.assert_allclose(to_prob([[.3, -np.inf]], None), [[.3, 0.]], rtol=1e-6)
    assert calibrate(raw[:1], IDS, truth[:1]) == (1., 0.)           # too few known answers: left alone

def test_model_scores_fit_save_load(tmp_path):
    m = _model('a', 3., 0, scale=5, shift=2)
    thr, best = best_threshold(m.pv, m.valid.ids, m.truth)
    assert (m.thr, m.map_valid) == (thr, best) and best == pytest.approx(query_aps(m.pv, IDS, m.truth, thr).mean())
    m.info = dict(kept='epoch 3', curve=[.1, .2])
    m.save(tmp_path/'m.npz'); r = ModelScores.load(tmp_path/'m.npz')
    assert (r.name, r.truth, r.ab, r.thr, r.map_valid, r.info) == (m.name, m.truth, m.ab, m.thr, m.map_valid, m.info)
    assert r.valid.names == m.valid.names and r.test.ids == m.test.ids
    np.testing.assert_array_equal(r.pt, m.pt)
    b = blend([m, _model('b', 2., 1)]); b.save(tmp_path/'b.npz')
    assert b.ab is None and ModelScores.load(tmp_path/'b.npz').ab is None
    np.testing.assert_array_equal(ModelScores.load(tmp_path/'b.npz').pv, b.pv)

def test_fit_aligns_test_to_the_validation_ids():
    m = _model('a', 3., 0)
    t = m.test.align(IDS[::-1] + ['w_extra'])
    f = ModelScores.fit('a', m.valid, m.truth, t)
    assert f.test.ids == IDS
    np.testing.assert_array_equal(f.test.values, m.test.values)

# --- blend -------------------------------------------------------------------------------------------------------------

def test_power_mean():
    p, q = np.array([[.25, 1.]]), np.array([[.64, 0.]])
    np.testing.assert_allclose(power_mean([p, q], [.5, .5], .5), [[.5*.5 + .5*.8, .5]])
    np.testing.assert_allclose(power_mean([p, q], [1., 0.], 2.), p**2)

def test_alpha_one_is_the_weighted_mean_of_calibrated_probabilities():
    a, b = _model('a', 3., 0, scale=4.), _model('b', 2., 1, shift=-3.)
    r = blend([a, b], weights=[1, 3], alpha=1.)
    np.testing.assert_allclose(r.valid.values, .25*a.pv + .75*b.pv, rtol=1e-5)
    np.testing.assert_allclose(r.test.values, .25*a.pt + .75*b.pt, rtol=1e-5)
    assert r.info['weights'] == dict(a=.25, b=.75) and r.info['alpha'] == 1.
    assert r.map_valid == pytest.approx(best_threshold(r.pv, IDS, a.truth)[1])

def test_columns_align_by_id_in_any_order():
    a, b = _model('a', 3., 0), _model('b', 2., 1)
    for kw in (dict(weights=[1, 1], alpha=.5), {}):
        r, rp = blend([a, b], **kw), blend([a, _permuted(b)], **kw)
        assert rp.valid.ids == r.valid.ids == IDS
        np.testing.assert_allclose(rp.valid.values, r.valid.values, rtol=1e-6)
        np.testing.assert_allclose(rp.test.values, r.test.values, rtol=1e-6)
        assert (rp.thr, rp.map_valid, rp.info['weights']) == (r.thr, r.map_valid, r.info['weights'])
    rp = blend([_permuted(a, 1), b])                                   # the first model's order is the result's
    assert rp.valid.ids == _permuted(a, 1).valid.ids
    np.testing.assert_allclose(rp.valid.align(IDS).values, blend([a, b]).valid.values, rtol=1e-6)

def test_an_id_one_model_lacks_scores_zero_there():
    a, b = _model('a', 3., 0), _model('b', 2., 1, ids=IDS[:-1])
    r = blend([a, b], weights=[1, 1], alpha=1.)
    np.testing.assert_allclose(r.valid.values[:, -1], .5*a.pv[:, -1], rtol=1e-6)

@pytest.mark.parametrize('seed', [0, 1, 2])
def test_blend_is_at_least_its_best_member(seed):
    truth = _truth(seed=seed)
    ms = [_model(n, sig, seed*10 + i, scale=sc, truth=truth) for i,(n, sig, sc) in enumerate([('a', 2.5, 1.), ('b', 2., 7.), ('c', 1.5, .2)])]
    r = blend(ms)
    assert r.map_valid >= max(m.map_valid for m in ms) - 1e-6, (r.map_valid, [m.map_valid for m in ms], r.info['weights'])
    assert r.map_valid == pytest.approx(best_threshold(r.pv, IDS, truth)[1])     # the figure is what its scores give

def test_blend_with_a_useless_member_is_not_below_the_best():
    "On a split of hundreds of photos a tie-break towards equal weights must not cost validation MAP@5 below the best member"
    truth = _truth(400, seed=0)
    ms = [_model('a', 2.5, 0, truth=truth), _model('noise', 0., 1, truth=truth)]
    r = blend(ms)
    assert r.map_valid >= ms[0].map_valid - 1e-6, (r.map_valid, ms[0].map_valid, r.info['weights'])

def test_blend_does_not_depend_on_the_order_of_its_members():
    "Three copies under different names tie on validation for every weighting: the caller's order must not pick the winner"
    import itertools
    truth = _truth(seed=3)
    ms = [_model(n, 2., 0, truth=truth) for n in ('knn', 'arcface', 'siamese')]
    rs = [blend(list(p)) for p in itertools.permutations(ms)]
    assert all(r.info['weights'] == rs[0].info['weights'] and r.info['alpha'] == rs[0].info['alpha'] for r in rs), [r.info['weights'] for r in rs]
    for r in rs[1:]: np.testing.assert_allclose(r.test.align(IDS).values, rs[0].test.align(IDS).values, rtol=1e-6)
    assert sorted(rs[0].info['weights'].values()) == pytest.approx([.3, .3, .4])   # as near equal as the grid allows

@pytest.mark.parametrize('seed,alpha', [(2, 1.), (7, 2.)])
def test_blend_takes_alpha_one_among_near_ties(seed, alpha):
    "Not clearly beaten by the best and nearest equal weights, α nearest 1 (the weighted mean) wins, unless below the best member"
    truth = _truth(seed=seed)
    ms = [_model('a', 2.5, seed, truth=truth), _model('b', 2., seed + 1, scale=7., truth=truth)]
    r = blend(ms, z=10.)                                # every candidate within 10 SE of the best counts as near
    at = {a: m for w,a,m in r.info['search'] if w == {'a': .5, 'b': .5}}
    assert r.info['weights'] == {'a': .5, 'b': .5} and r.info['alpha'] == alpha, (r.info['weights'], r.info['alpha'], at)
    assert at[2.] > at[1.]                              # the best-scoring α at these weights is 2, not 1
    assert (at[1.] >= max(m.map_valid for m in ms)) == (alpha == 1.)   # seed 7: α 1 is below member a, so 2 stands

def test_blend_leaves_equal_weights_only_for_a_clear_gain():
    "z = 0: the best candidate on validation; a bar no gain clears: equal weights at α 1; the default sits between"
    truth = _truth(seed=4)
    ms = [_model('a', 2.5, 4, truth=truth), _model('b', 2., 5, scale=7., truth=truth), _model('c', 1., 6, truth=truth)]
    best, even = blend(ms, z=0.), blend(ms, z=50.)
    top = max(m for _,_,m in best.info['search'])
    assert best.map_valid == pytest.approx(top, abs=1e-4) and sorted(best.info['weights'].values()) != pytest.approx([.3, .3, .4])
    assert sorted(even.info['weights'].values()) == pytest.approx([.3, .3, .4]) and even.info['alpha'] == 1.
    assert even.map_valid < top                                     # equal weights score lower, but not clearly so
    mid = blend(ms)
    assert even.map_valid - 1e-9 <= mid.map_valid <= top + 1e-4

def test_blend_of_one_and_bad_splits():
    a = _model('a', 3., 0)
    assert blend([a]) is a
    other = _model('b', 2., 1, truth=_truth(seed=5))
    with pytest.raises(ValueError, match='another validation split'): blend([a, other])

# --- re-ranking -------------------------------------------------------------------------------------------------------

def test_topk_mean_against_sorting():
    s = np.random.default_rng(0).normal(size=(7, 12)).astype(np.float32)
    np.testing.assert_allclose(topk_mean(s, 3), np.sort(s, 1)[:, -3:].mean(1), rtol=1e-6)
    np.testing.assert_allclose(topk_mean(s, 4, axis=0), np.sort(s, 0)[-4:].mean(0), rtol=1e-6)
    np.testing.assert_allclose(topk_mean(s, 50), s.mean(1), rtol=1e-5)           # fewer than k: all of them
    assert topk_mean(np.zeros((0, 5)), 3, axis=0).shape == (5,) and topk_mean(np.zeros((4, 0)), 3).shape == (4,)

def test_csls_demotes_a_hub_and_is_the_identity_at_beta_0():
    "A gallery photo near every query (a hub) wins each row by raw similarity; CSLS hands each query its own match"
    rng = np.random.default_rng(1)
    own = rng.uniform(0.1, 0.3, (6, 6)).astype(np.float32); np.fill_diagonal(own, 0.65)          # query i is photo i's whale
    s = np.c_[own, np.full((6, 1), 0.72, np.float32)]                                         # photo 6: the hub
    assert (s.argmax(1) == 6).all() and not (own.argmax(1) != np.arange(6)).any()
    r = csls(s, topk_mean(s, 2), topk_mean(s, 2, axis=0))
    assert (r.argmax(1) == np.arange(6)).all() and r.dtype == np.float32
    np.testing.assert_array_equal(csls(s, topk_mean(s, 2), topk_mean(s, 2, axis=0), beta=0.), s)
    # the query term shifts a whole row: ranks within the row do not change, only the row's level (new_whale threshold)
    r_g0 = np.zeros(7, np.float32)
    assert (np.argsort(-csls(s, topk_mean(s, 2), r_g0), 1) == np.argsort(-s, 1)).all()

def test_no_validation_split_takes_the_defaults():
    "With no known whale to validate on: uncalibrated scores, new_whale first for the leaderboard's share, equal blend weights"
    rng = np.random.default_rng(0); ids = ['a', 'b', 'c']; names = [f't{i}' for i in range(1000)]
    empty = ScoreMatrix([], ids, np.zeros((0, 3)))
    ms = [ModelScores.fit(n, empty, [], ScoreMatrix(names, ids, rng.random((1000, 3)))) for n in ('knn', 'arcface')]
    for m in ms:
        assert m.ab == (1., 0.) and np.isnan(m.map_valid) and not m.has_valid
        assert abs((m.pt.max(1) <= m.thr).mean() - 0.276) < 0.002
    b = blend(ms)
    assert b.info['weights'] == {'knn': 0.5, 'arcface': 0.5} and b.info['alpha'] == 1. and np.isnan(b.map_valid)
    assert np.allclose(b.pt, (ms[0].pt + ms[1].pt)/2) and abs((b.pt.max(1) <= b.thr).mean() - 0.276) < 0.002
    assert blend(ms, weights=[1, 3]).info['weights'] == {'knn': 0.25, 'arcface': 0.75}   # given weights are kept
    # a validation split of new_whale photos alone has no known whale either
    nw = ModelScores.fit('knn', ScoreMatrix(['v0'], ids, [[.9, .1, .1]]), [NEW_WHALE], ScoreMatrix(names, ids, rng.random((1000, 3))))
    assert np.isnan(nw.map_valid) and not nw.has_valid
