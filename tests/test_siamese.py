"Symmetric head, all-pairs scoring, pair batches and the Siamese learner (`whale_kernel.pairscore`, `whale_kernel.siamese`)"
import math, os, subprocess, sys, textwrap
import numpy as np, pytest, torch
from whale_kernel.core import TimeBudget
from whale_kernel.data import NEW_WHALE
from whale_kernel.train import pooled_views, load_checkpoint
from whale_kernel.pipeline import quiet_bars
from whale_kernel.pairscore import SymmetricHead, HeadFactors, scores_naive, scores_exact, scores_fast
from whale_kernel.siamese import (SiameseBranch, SiameseNet, PairDL, pair_dls, valid_pairs, fit_siamese, siamese_features,
                                  siamese_similarity, branch_features, imprint_head, imprint_siamese)
from test_utils import toy_whales, tiny_preset, state, same_state

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

def _toy(): return toy_whales(n_ids=6, per_id=3, n_new=4, size=(16, 32), noise=True)

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
    br = SiameseBranch('resnet10t', weights=None, n_feats=8).eval()
    pv = pooled_views(br.backbone, imgs, views=4)
    assert pv.shape == (4, len(imgs), br.fc.in_features)
    pairs = np.array([[0, 1, 1], [2, 5, 0]])
    x, y = PairDL(pairs, imgs=pv, bs=2).do_batch(list(pairs))
    torch.testing.assert_close(x, pv[0, [0, 2, 1, 5]])
    np.random.seed(1)
    for _ in range(5):
        x, _ = PairDL(pairs, imgs=pv, bs=2, flip=True).do_batch(list(pairs))
        for i, (a, b, _) in enumerate(pairs):   # both members of a pair mirrored, or neither: views of the same parity
            va = [v for v in range(4) if torch.equal(x[i], pv[v, a])]; vb = [v for v in range(4) if torch.equal(x[2 + i], pv[v, b])]
            assert len(va) == len(vb) == 1 and va[0] % 2 == vb[0] % 2
    # the branch's neck on pooled features = the branch on photos, and on the sphere of radius √d
    f = branch_features(br, pv[0])
    torch.testing.assert_close(f, branch_features(br, imgs), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f.norm(dim=1), torch.full((len(imgs),), math.sqrt(8)))
    torch.testing.assert_close(branch_features(br, pv[1]), branch_features(br, imgs, flip=True), rtol=1e-4, atol=1e-4)

def test_branch_features_in_eval_mode_whatever_the_mode():
    imgs, _ = _toy()
    br = SiameseBranch('resnet10t', weights=None, n_feats=8).train()
    bn0 = br.bn.running_mean.clone()
    f = branch_features(br, imgs)
    assert br.training and torch.equal(br.bn.running_mean, bn0)                           # the model is left as it was
    torch.testing.assert_close(f, branch_features(br.eval(), imgs), rtol=1e-4, atol=1e-4)

def test_imprint_head_is_a_scaled_cosine():
    h = imprint_head(SymmetricHead(16, 8), s=10., c=.2).eval()
    x, y = torch.randn(30, 16), torch.randn(30, 16)
    x, y = (torch.nn.functional.normalize(o, dim=1)*4 for o in (x, y))                    # on the sphere of radius √16
    with torch.no_grad(): torch.testing.assert_close(h(x, y), 10*((x*y).sum(1)/16 - .2), rtol=1e-4, atol=1e-4)

def test_imprint_siamese_separates_train_pairs():
    imgs, ids = toy_whales(n_ids=5, per_id=3, n_new=0)
    m = SiameseNet(SiameseBranch('resnet10t', weights=None, n_feats=8), SymmetricHead(8, 8)).eval()
    pv = pooled_views(m.branch.backbone, imgs, views=1)[0]
    same = np.array([[i, j] for i in range(15) for j in range(15) if i < j and ids[i] == ids[j]])
    diff = np.array([[i, j] for i in range(15) for j in range(15) if i < j and ids[i] != ids[j]])
    imprint_siamese(m, pv, same, diff, s=10.)
    with torch.no_grad():
        f = branch_features(m.branch, pv)
        lg = lambda p: m.head(f[p[:, 0]], f[p[:, 1]])
        cos = lambda p: (f[p[:, 0]]*f[p[:, 1]]).sum(1)/8
        c = float((cos(same).mean() + cos(diff).mean())/2)
        torch.testing.assert_close(lg(diff), 10*(cos(diff) - c), rtol=1e-4, atol=1e-4)   # ranks pairs like the cosine
    assert lg(same).mean() > 0 > lg(diff).mean()                                          # centred between the two

TR, VA = np.arange(18), np.arange(0, 15, 3)      # every photo trains; one photo of each whale also scores validation

@pytest.fixture(scope='module', params=['frozen', 'finetune'])
def tiny_fit(request, tmp_path_factory):
    imgs, ids = toy_whales(n_ids=5, per_id=3, n_new=3, size=(16, 32), noise=True)
    path = tmp_path_factory.mktemp('siamese')
    kw = dict(preset=tiny_preset(siamese_mode=request.param, siamese_epochs=(2, 2), lap_every=1), k_start=1, k_end=0.5)
    with quiet_bars(True): learn = fit_siamese(imgs, ids, TR, VA, path=path, **kw)
    return learn, imgs, ids, path, kw

def test_fit_mines_and_checkpoints(tiny_fit):
    learn, imgs, ids, path, kw = tiny_fit
    st = learn.lap_mining.stats
    assert [s['epoch'] for s in st] == [0, 1] and all(s['refreshed'] for s in st)   # refreshed every epoch
    assert len(learn.dls.train.dataset) == 2 * learn.lap_mining.miner.n
    ck = load_checkpoint(path/'siamese.pth')
    assert (ck['stage'], ck['epoch']) == (learn.fit_log[-1]['stage'], 1)
    frozen = kw['preset'].siamese_mode == 'frozen'
    assert [o['stage'] for o in learn.fit_log] == (['neck'] if frozen else ['head', 'body'])
    assert any(p.requires_grad for p in learn.model.branch.backbone.parameters()) != frozen
    assert len(learn.selector.curve) == sum(len(o['secs']) for o in learn.fit_log) == (2 if frozen else 3)   # every epoch scored
    assert learn.kept in ('step 0', 'epoch 0', 'epoch 1', 'epoch 2')

def test_fit_resumes(tiny_fit):
    learn, imgs, ids, path, kw = tiny_fit
    with quiet_bars(True): again = fit_siamese(imgs, ids, TR, VA, path=path, **kw)
    assert again.fit_log == [] and again.kept == learn.kept                         # nothing left to train
    assert same_state(state(again.model), state(learn.model))

def test_features_and_similarity(tiny_fit):
    learn, imgs, ids, path, kw = tiny_fit
    f = siamese_features(learn, imgs[:5], tta=False)
    assert f.shape == (5, 8) and f.device.type == 'cpu'
    ft = siamese_features(learn, imgs[:5])
    assert ft.shape == (5, 16)
    torch.testing.assert_close(ft[:, :8], f)
    fm = siamese_features(learn, imgs[:5, :, ::-1].copy())
    torch.testing.assert_close(torch.cat([fm[:, 8:], fm[:, :8]], 1), ft, rtol=1e-4, atol=1e-4)   # the mirror swaps the views
    torch.testing.assert_close(siamese_features(learn, imgs, idxs=[4, 2]), siamese_features(learn, imgs[[4, 2]]), rtol=1e-4, atol=1e-4)
    s = siamese_similarity(learn, ft[:2], ft)
    assert s.shape == (2, 5) and s.dtype == np.float32
    np.testing.assert_allclose(siamese_similarity(learn, ft[:2], ft, prob=True), 1/(1 + np.exp(-s)), rtol=1e-5)
    ex = siamese_similarity(learn, ft[:2], ft, method='exact')
    np.testing.assert_allclose(ex, siamese_similarity(learn, ft[:2], ft, method='naive'), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match='method'): siamese_similarity(learn, ft, ft, method='magic')

def test_budget_stops_training():
    imgs, ids = toy_whales(n_ids=5, per_id=3, n_new=3, size=(16, 32), noise=True)
    with quiet_bars(True):
        learn = fit_siamese(imgs, ids, TR, VA, preset=tiny_preset(siamese_epochs=(5, 5)), budget=TimeBudget(0))
    assert learn.halted == 'budget' and len(learn.fit_log[0]['secs']) == 1

def test_fit_bad_input():
    imgs, ids = _toy()
    with pytest.raises(ValueError, match='photos but'): fit_siamese(imgs, ids[:-1], np.arange(5), preset=tiny_preset())
    with pytest.raises(ValueError, match='no whale has two'):
        fit_siamese(imgs, np.array([NEW_WHALE] * len(imgs)), np.arange(len(imgs)), preset=tiny_preset())

def test_whitening_sees_the_training_rows_only(monkeypatch):
    "Held-out photos stay out of the imprinted whitening, as test photos do: changing them leaves the neck's fit unchanged"
    import whale_kernel.siamese as S
    seen = []
    def spy(model, pooled, pos=None, neg=None, s=10., white=None):
        seen.append(white.clone()); return imprint_siamese(model, pooled, pos, neg, s, white)
    monkeypatch.setattr(S, 'imprint_siamese', spy)
    imgs, ids = toy_whales(n_ids=5, per_id=3, n_new=3, size=(16, 32), noise=True)
    tr = np.setdiff1d(np.arange(len(ids)), VA)
    other = imgs.copy(); other[VA] = 255 - other[VA]                   # the held-out photos, and nothing else, change
    with quiet_bars(True):
        for x in (imgs, other):
            fit_siamese(x, ids, tr, VA, preset=tiny_preset(siamese_epochs=(1, 1)), budget=TimeBudget(0), k_start=1)
    assert len(seen) == 2 and len(seen[0]) == 2*len(tr)                 # plain and mirrored views of the training rows
    torch.testing.assert_close(seen[0], seen[1])
