"Symmetric head, all-pairs scoring, pair batches and the Siamese learner (`whale_kernel.pairscore`, `whale_kernel.siamese`)"
import os, subprocess, sys, textwrap
import numpy as np, pytest, torch
from whale_kernel.core import get_preset
from whale_kernel.data import NEW_WHALE
from whale_kernel.lap import PairMiner
from whale_kernel.pairscore import SymmetricHead, HeadFactors, scores_naive, scores_exact, scores_fast
from whale_kernel.siamese import (SiameseBranch, SiameseNet, PairDL, pair_dls, valid_pairs, fit_siamese, siamese_features,
                                  siamese_similarity, branch_features, pooled_cache, LapMining)

torch.set_num_threads(1)

def _head(d=32, mid=32, sharp=3., seed=0):
    torch.manual_seed(seed)
    h = SymmetricHead(d, mid).eval()
    with torch.no_grad(): h.mid.weight.mul_(sharp); h.out.weight.mul_(sharp)
    return h

def test_head_symmetric():
    h = _head()
    x, y = torch.randn(64, 32) * 2, torch.randn(64, 32) * 2
    torch.testing.assert_close(h(x, y), h(y, x))
    torch.testing.assert_close(h.g(x, y), h.g(y, x))
    assert h(x, y).shape == (64,)
    assert not torch.allclose(h(x, y), h(x, x))   # it does depend on the pair

def test_net_symmetric_in_pair_order():
    net = SiameseNet(SiameseBranch('resnet10t', weights=None, n_feats=16), SymmetricHead(16)).eval()
    x = torch.randn(8, 3, 32, 64)
    torch.testing.assert_close(net(x), net(torch.cat([x[4:], x[:4]])), rtol=1e-4, atol=1e-5)

def test_exact_equals_naive():
    h = _head(16)
    q, g = torch.randn(45, 16), torch.randn(70, 16)
    ex = scores_exact(h, q, g, chunk=16)
    torch.testing.assert_close(ex, scores_naive(h, q, g, chunk=16), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ex[3, 5], h(q[3:4], g[5:6])[0], rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize('d', [16, 128])
def test_fast_matches_exact(d):
    h = _head(d)
    q, g = torch.randn(150, d), torch.randn(220, d)
    ex = scores_exact(h, q, g)
    fa = scores_fast(h, q, g, chunk=64)
    err = (fa - ex).abs()
    assert err.max() < 0.05 * ex.std() and err.mean() < 0.005 * ex.std()
    assert (fa.argmax(1) == ex.argmax(1)).float().mean() > 0.95
    # fewer terms, larger error: the rank is what buys the accuracy
    assert (scores_fast(h, q, g, rank=2) - ex).abs().mean() > err.mean()

def test_fast_refine_is_exact_on_top():
    h = _head(16)
    q, g = torch.randn(40, 16), torch.randn(90, 16)
    ex, rough = scores_exact(h, q, g), scores_fast(h, q, g, rank=3)
    top = rough.topk(7, dim=1).indices
    fr = scores_fast(h, q, g, rank=3, refine=7)
    torch.testing.assert_close(fr.gather(1, top), ex.gather(1, top), rtol=1e-4, atol=1e-4)

def test_fast_views_average():
    "(n, 2d) features: the mean logit over the two views, as the exact path gives it"
    h = _head(16)
    q, g = torch.randn(30, 32), torch.randn(50, 32)
    ex = (scores_exact(h, q[:, :16], g[:, :16]) + scores_exact(h, q[:, 16:], g[:, 16:])) / 2
    fa = scores_fast(h, q, g)
    assert (fa - ex).abs().max() < 0.05 * ex.std()
    torch.testing.assert_close(torch.from_numpy(siamese_similarity(h, q, g, method='exact')), ex, rtol=1e-4, atol=1e-4)

def test_factors_cover_range():
    h = _head(8)
    f = torch.randn(100, 8) * 3
    fac = HeadFactors(h, [f], rank=8)
    assert fac.lo <= f.min() and fac.hi >= f.max() and fac.u.shape == (256, 8)

def test_triton_kernel_in_interpreter():
    pytest.importorskip('triton')
    code = textwrap.dedent('''
        import torch
        from whale_kernel.pairscore import SymmetricHead, scores_exact, scores_triton
        torch.manual_seed(0)
        h = SymmetricHead(8, mid=4).eval()
        q, g = torch.randn(37, 8), torch.randn(70, 8)
        err = (scores_triton(h, q, g, bp=16, bq=32, chunk=20) - scores_exact(h, q, g)).abs().max().item()
        assert err < 1e-4, err
        print('ok')''')
    r = subprocess.run([sys.executable, '-c', code], env={**os.environ, 'TRITON_INTERPRET': '1'},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-2000:]

def _toy(n_ids=6, per_id=3, n_new=4, size=(16, 32), seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 255, (n_ids * per_id + n_new, *size, 3), dtype=np.uint8)
    ids = np.array([f'w{i}' for i in range(n_ids) for _ in range(per_id)] + [NEW_WHALE] * n_new, dtype=object)
    return imgs, ids

def test_pair_batches_layout():
    imgs, ids = _toy()
    pairs = np.array([[0, 1, 1], [2, 5, 0], [7, 3, 0]])
    dl = PairDL(pairs, imgs=imgs, bs=3)
    x, y = dl.do_batch([pairs[i] for i in range(3)])
    assert x.shape == (6, 3, 16, 32) and x.dtype == torch.uint8
    for i, (a, b, _) in enumerate(pairs):
        np.testing.assert_array_equal(x[i].permute(1, 2, 0).numpy(), imgs[a])
        np.testing.assert_array_equal(x[3 + i].permute(1, 2, 0).numpy(), imgs[b])
    assert y.tolist() == [1., 0., 0.]
    dl = PairDL(pairs, imgs=imgs, bs=3, flip=True)
    np.random.seed(0)
    x, _ = dl.do_batch([pairs[i] for i in range(3)])
    for i, (a, b, _) in enumerate(pairs):   # both photos of a pair mirrored together, or neither
        fa = np.array_equal(x[i].permute(1, 2, 0).numpy(), imgs[a][:, ::-1])
        fb = np.array_equal(x[3 + i].permute(1, 2, 0).numpy(), imgs[b][:, ::-1])
        assert fa == fb
    dls = pair_dls(imgs, pairs, pairs, bs=2, size=(24, 40), device='cpu')
    xb, yb = dls.train.one_batch()
    assert xb.shape == (4, 3, 24, 40) and xb.dtype == torch.float32 and yb.shape == (2,)
    dls.train.set_pairs(np.r_[pairs, pairs])
    assert len(dls.train) == 3

def test_valid_pairs():
    imgs, ids = _toy()
    tr, va = np.arange(0, 22, 2), np.arange(1, 22, 2)
    vp = valid_pairs(ids, tr, va, seed=0)
    assert set(vp[:, 0]) <= set(va) and set(vp[:, 1]) <= set(tr)
    assert ((ids[vp[:, 0]] == ids[vp[:, 1]]) == (vp[:, 2] == 1)).all()
    assert (ids[vp[:, 1]] != NEW_WHALE).all()

def test_pooled_pairs_and_features():
    imgs, ids = _toy()
    br = SiameseBranch('resnet10t', weights=None, n_feats=8)
    cache = pooled_cache(br, imgs, size=(24, 48))
    assert cache.shape == (2, len(imgs), br.fc.in_features)
    torch.testing.assert_close(cache[1], branch_features(br, imgs, size=(24, 48), pooled=True, flip=True))
    pairs = np.array([[0, 1, 1], [2, 5, 0]])
    x, y = PairDL(pairs, imgs=cache, bs=2).do_batch(list(pairs))
    torch.testing.assert_close(x, cache[0, [0, 2, 1, 5]])
    np.random.seed(1)
    x, _ = PairDL(pairs, imgs=cache, bs=2, flip=True).do_batch(list(pairs))
    for i, (a, b, _) in enumerate(pairs):   # the same view for both members of a pair
        va = [v for v in (0, 1) if torch.equal(x[i], cache[v, a])]; vb = [v for v in (0, 1) if torch.equal(x[2 + i], cache[v, b])]
        assert va == vb
    # the branch's neck on pooled features = the branch on photos
    torch.testing.assert_close(branch_features(br, cache[0]), branch_features(br, imgs, size=(24, 48)), rtol=1e-4, atol=1e-4)

@pytest.fixture(scope='module')
def tiny_fit(tmp_path_factory):
    imgs, ids = _toy(n_ids=5, per_id=3, n_new=3)
    path = tmp_path_factory.mktemp('siamese')
    pre = get_preset('cpu', arch='resnet10t', weights=None, siamese_feats=8, siamese_epochs=2, bs=4, lap_every=1,
                     siamese_size=(16, 32))
    learn = fit_siamese(imgs, ids, np.arange(15), np.arange(15, 18), preset=pre, path=path, k_start=1, k_end=0.5)
    return learn, imgs, ids, pre, path

def test_fit_mines_and_checkpoints(tiny_fit):
    learn, imgs, ids, pre, path = tiny_fit
    st = learn.lap_mining.stats
    assert [s['epoch'] for s in st] == [0, 1] and all(s['refreshed'] for s in st)   # refreshed every epoch
    assert (path / 'siamese.pth').exists()
    assert len(learn.dls.train.dataset) == 2 * learn.lap_mining.miner.n
    assert not hasattr(learn, 'pooled')                                                 # weights=None: fine-tuned whole

def test_fit_resumes(tiny_fit):
    learn, imgs, ids, pre, path = tiny_fit
    again = fit_siamese(imgs, ids, np.arange(15), preset=pre, path=path)
    assert not hasattr(again.lap_mining, 'stats') or again.lap_mining.stats == []                 # nothing left to train
    torch.testing.assert_close(again.model.state_dict()['head.fc.weight'], learn.model.state_dict()['head.fc.weight'])

def test_features_and_similarity(tiny_fit):
    learn, imgs, ids, pre, path = tiny_fit
    f = siamese_features(learn, imgs[:5], tta=False)
    assert f.shape == (5, 8) and f.device.type == 'cpu'
    ft = siamese_features(learn, imgs[:5])
    assert ft.shape == (5, 16)
    torch.testing.assert_close(ft[:, :8], f)
    s = siamese_similarity(learn, ft[:2], ft)
    assert s.shape == (2, 5) and s.dtype == np.float32
    p = siamese_similarity(learn, ft[:2], ft, prob=True)
    assert ((p >= 0) & (p <= 1)).all()
    with pytest.raises(ValueError, match='method'): siamese_similarity(learn, ft, ft, method='magic')

def test_fit_frozen_backbone():
    imgs, ids = _toy(n_ids=5, per_id=3, n_new=3)
    pre = get_preset('cpu', arch='resnet10t', weights=None, siamese_feats=8, siamese_epochs=3, bs=4, lap_every=1,
                     siamese_size=(16, 32))
    learn = fit_siamese(imgs, ids, np.arange(15), preset=pre, freeze=1, k_start=1, k_end=0.5)
    assert learn.pooled[0] is imgs and learn.pooled[1].shape[:2] == (2, len(imgs))
    assert [s['epoch'] for s in learn.lap_mining.stats] == [0, 1, 2]
    f = siamese_features(learn, imgs)                                   # from the cache ...
    torch.testing.assert_close(f, siamese_features(learn, imgs.copy()), rtol=1e-4, atol=1e-4)   # ... = from the photos
    assert all(not p.requires_grad for p in learn.model.branch.backbone.parameters())

def test_fit_bad_input():
    imgs, ids = _toy()
    with pytest.raises(ValueError, match='photos but'): fit_siamese(imgs, ids[:-1], np.arange(5))
    with pytest.raises(ValueError, match='no whale has two'):
        fit_siamese(imgs, np.array([NEW_WHALE] * len(imgs)), np.arange(len(imgs)))
