"Tests of whale_kernel.arcface: ArcFace maths against a reference, sub-centres, dynamic margins, flip classes, training, resume"
import math, numpy as np, pytest, torch, torch.nn.functional as F
from fastai.callback.core import Callback, CancelFitException
from fastai.torch_core import set_seed
from whale_kernel.core import get_preset
from whale_kernel.data import NEW_WHALE, array_dls
from whale_kernel.arcface import (CosineHead, ArcFaceLoss, arc_margin, dynamic_margins, flip_labels, fold_flips, FlipClasses,
                                  oversample, arcface_learner, fit_arcface, load_checkpoint, arcface_features,
                                  arcface_similarity, arcface_class_scores, arcface_splitter)

torch.set_num_threads(1)

def _toy(n_ids=6, per_id=3, n_new=3, size=(32,64), seed=0):
    "uint8 photos of `n_ids` whales, each a fixed random pattern re-lit and noised, plus `n_new` new_whales"
    rng = np.random.default_rng(seed); h,w = size
    def pat(): return F.interpolate(torch.rand(1,3,3,6, generator=torch.Generator().manual_seed(int(rng.integers(1<<30)))),
                                    size=size, mode='bilinear', align_corners=False)[0].numpy()
    def shot(p): return (np.clip(p*rng.uniform(.8,1.2) + rng.normal(0,.05,p.shape), 0, 1)*255).astype(np.uint8).transpose(1,2,0)
    imgs,ids = [],[]
    for i in range(n_ids):
        p = pat(); imgs += [shot(p) for _ in range(per_id)]; ids += [f'w{i}']*per_id
    for i in range(n_new): imgs.append(shot(pat())); ids.append(NEW_WHALE)
    return np.stack(imgs), np.array(ids, dtype=object)

PRE = get_preset('cpu', weights=None, emb_dim=16, bs=8, min_per_id=2)

# --- ArcFace maths ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('m', [0.5, 1.2])
def test_logits_match_pytorch_metric_learning(m):
    pml = pytest.importorskip('pytorch_metric_learning.losses')
    torch.manual_seed(0)
    n_cls, d, s = 5, 16, 20.
    head = CosineHead(d, n_cls)
    y = torch.arange(12) % n_cls
    emb = torch.randn(12, d)
    emb[:4] = -head.weight.detach()[y[:4]] + 0.1*torch.randn(4, d)   # angles near π: the threshold branch
    ref = pml.ArcFaceLoss(n_cls, d, margin=math.degrees(m), scale=s)
    ref.W.data = head.weight.detach().T.clone()
    cos = ref.get_cosine(emb)
    mask = ref.get_target_mask(emb, y)
    tgt = cos[mask == 1]
    ref_logits = ref.scale_logits(cos + mask*(ref.modify_cosine_of_target_classes(tgt) - tgt).unsqueeze(1), emb)
    lf = ArcFaceLoss(s=s, m=m)
    with torch.no_grad():
        ours = lf.logits(head(emb), y)
        assert (head(emb).gather(1, y[:,None]) < -math.cos(m)).any()   # the branch was exercised
        torch.testing.assert_close(ours, ref_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lf(head(emb), y), ref(emb, y), atol=1e-4, rtol=1e-4)

def test_margin_hand_worked():
    cos = torch.tensor([[0.5, 0.2, -0.1]])
    out = arc_margin(cos, torch.tensor([0]), m=0.5)
    assert out[0,0].item() == pytest.approx(math.cos(math.pi/3 + 0.5), abs=1e-6)
    torch.testing.assert_close(out[0,1:], cos[0,1:])
    # beyond π - m the logit keeps decreasing with the angle (monotonic), instead of turning back up
    c = torch.linspace(-0.999, 0.999, 200)[:,None]
    phi = arc_margin(c, torch.zeros(200, dtype=torch.long), m=0.5)[:,0]
    assert (phi.diff() > 0).all()

def test_margin_gradient_finite_at_extremes():
    cos = torch.tensor([[1.0, 0.], [-1.0, 0.]], requires_grad=True)
    ArcFaceLoss(s=30., m=0.5)(cos, torch.tensor([0, 0])).backward()
    assert torch.isfinite(cos.grad).all()

def test_subcentre_k1_is_plain():
    torch.manual_seed(0)
    e = torch.randn(7, 8)
    h1 = CosineHead(8, 4, k=1)
    torch.testing.assert_close(h1(e), F.normalize(e) @ F.normalize(h1.weight).T)
    h3 = CosineHead(8, 4, k=3)
    with torch.no_grad(): h3.weight.copy_(h1.weight.repeat_interleave(3, 0))   # three identical sub-centres per class
    torch.testing.assert_close(h3(e), h1(e))
    with torch.no_grad(): h3.weight.normal_()
    full = (F.normalize(e) @ F.normalize(h3.weight).T).view(7, 4, 3)
    torch.testing.assert_close(h3(e), full.amax(-1))
    assert (h3(e) >= full[..., 0]).all()

def test_dynamic_margin_formula():
    counts = np.array([1, 3, 10, 100])
    a, lam, b = 0.3, 0.5, 0.05
    ms = dynamic_margins(counts, a=a, lam=lam, b=b)
    torch.testing.assert_close(ms, torch.tensor(a*counts.astype(np.float32)**-lam + b))
    assert (ms.diff() < 0).all()     # rarer whales get wider margins
    cos = torch.rand(8, 4)*1.6 - 0.8; y = torch.tensor([0,1,2,3,3,2,1,0])
    got = ArcFaceLoss(s=10., margins=ms).logits(cos, y)
    for i in range(8):
        want = 10*arc_margin(cos[i:i+1], y[i:i+1], m=float(ms[y[i]]))
        torch.testing.assert_close(got[i:i+1], want)

# --- flip classes, oversampling ---------------------------------------------------------------------------------------

def test_flip_labels_and_folding_round_trip():
    n = 5
    y = torch.arange(2*n)
    torch.testing.assert_close(flip_labels(flip_labels(y, n), n), y)
    assert flip_labels(torch.tensor([0, 4]), n).tolist() == [5, 9]
    sc = torch.rand(3, 2*n)
    torch.testing.assert_close(fold_flips(sc[:, flip_labels(torch.arange(2*n), n)], n, flipped=True), fold_flips(sc, n))

class _FakeLearn:
    training = True

def test_flip_callback_mirrors_and_relabels():
    torch.manual_seed(0)
    n = 4
    x = torch.rand(64, 3, 2, 5); y = torch.arange(64) % n
    cb = FlipClasses(n, p=0.5); cb.learn = _FakeLearn(); cb.learn.xb, cb.learn.yb = (x,), (y,)
    cb.before_batch()
    x2, y2 = cb.learn.xb[0], cb.learn.yb[0]
    m = y2 >= n
    assert 10 < m.sum() < 54
    torch.testing.assert_close(x2[m], x[m].flip(-1)); torch.testing.assert_close(x2[~m], x[~m])
    torch.testing.assert_close(flip_labels(y2[m], n), y[m]); torch.testing.assert_close(y2[~m], y[~m])
    cb.learn.training = False; cb.learn.xb, cb.learn.yb = (x,), (y,)
    cb.before_batch()
    assert cb.learn.yb[0] is y   # validation batches are left alone

def test_oversample():
    labs = np.array(['a']*1 + ['b']*2 + ['c']*6 + ['d'], dtype=object)
    o = oversample(np.arange(9), labs, min_per_id=4)
    cnt = {k:(labs[o] == k).sum() for k in 'abcd'}
    assert cnt == dict(a=4, b=4, c=6, d=0)
    assert set(o) == set(range(9))

# --- learner ----------------------------------------------------------------------------------------------------------

def test_splitter_covers_every_parameter_once():
    imgs, ids = _toy()
    known = np.flatnonzero(ids != NEW_WHALE)
    dls = array_dls(imgs, ids, known, None, vocab=sorted(set(ids[known])), bs=4)
    learn = arcface_learner(dls, weights=None, emb_dim=8)
    gs = arcface_splitter(learn.model)
    ps = [id(p) for g in gs for p in g]
    assert len(ps) == len(set(ps)) == len(list(learn.model.parameters()))
    assert len(learn.opt.param_lists) == 3 if learn.opt else True

def test_training_lowers_loss():
    set_seed(0)
    imgs, ids = _toy()
    known = np.flatnonzero(ids != NEW_WHALE)
    vocab = sorted(set(ids[known]))
    dls = array_dls(imgs, ids, known, None, vocab=vocab, bs=6, aug=False)
    learn = arcface_learner(dls, weights='offline', emb_dim=16, s=10., m=0.2, flip=False)
    xb, yb = next(iter(array_dls(imgs, ids, known, None, vocab=vocab, bs=len(known), aug=False, shuffle=False).train))
    def loss():
        with torch.no_grad(): return learn.loss_func(learn.model.eval()(xb), yb).item()
    before = loss()
    learn.fit(5, 1e-2)
    assert loss() < 0.85*before

def test_fit_arcface_drops_new_whale_and_checks_input():
    imgs, ids = _toy()
    with pytest.raises(ValueError, match='photos but'): fit_arcface(imgs, ids[:-1], np.arange(5), preset=PRE)
    with pytest.raises(ValueError, match='no known whale'):
        fit_arcface(imgs, ids, np.flatnonzero(ids == NEW_WHALE), preset=PRE)
    with pytest.raises(ValueError, match='unfreeze'): fit_arcface(imgs, ids, np.arange(len(ids)), preset=PRE, unfreeze='some')
    learn = fit_arcface(imgs, ids, np.arange(len(ids)), preset=PRE, epochs=0, freeze_epochs=0)
    assert NEW_WHALE not in learn.dls.vocab and len(learn.dls.vocab) == 6
    assert learn.model.head.n_classes == 12    # flip classes double them

class _Count(Callback):
    order = 95
    def __init__(self, stop_after=None): self.n, self.stop_after = 0, stop_after
    def after_train(self): self.n += 1
    def after_epoch(self):
        if self.stop_after is not None and self.n >= self.stop_after: raise CancelFitException()

def test_checkpoint_resume(tmp_path):
    imgs, ids = _toy()
    tr = np.arange(len(ids))
    kw = dict(preset=PRE, path=tmp_path, epochs=2, freeze_epochs=1)
    c1 = _Count(stop_after=2)                # killed after the frozen epoch and thawed epoch 0
    fit_arcface(imgs, ids, tr, cbs=[c1], **kw)
    ck = load_checkpoint(tmp_path/'arcface.pth')
    assert (ck['stage'], ck['epoch']) == ('thawed', 0)
    c2 = _Count()
    learn = fit_arcface(imgs, ids, tr, cbs=[c2], **kw)
    assert c2.n == 1                         # only thawed epoch 1 is left
    ck = load_checkpoint(tmp_path/'arcface.pth')
    assert (ck['stage'], ck['epoch']) == ('thawed', 1)
    torch.testing.assert_close(ck['model']['head.weight'], learn.model.head.weight.detach())
    c3 = _Count()
    fit_arcface(imgs, ids, tr, cbs=[c3], **kw)
    assert c3.n == 0                         # finished: loads, trains nothing
    c4 = _Count()
    fit_arcface(imgs, ids, tr[ids[tr] != 'w0'], cbs=[c4], **kw)
    assert c4.n == 3                         # other whales: the checkpoint does not apply

def test_budget_stops_training(tmp_path):
    from whale_kernel.core import TimeBudget
    imgs, ids = _toy()
    c = _Count()
    fit_arcface(imgs, ids, np.arange(len(ids)), preset=PRE, budget=TimeBudget(0), epochs=3, freeze_epochs=1, cbs=[c])
    assert c.n == 1

# --- inference --------------------------------------------------------------------------------------------------------

def test_features_similarity_and_flip_tta():
    imgs, ids = _toy()
    learn = fit_arcface(imgs, ids, np.arange(len(ids)), preset=PRE, epochs=0, freeze_epochs=1)
    f = arcface_features(learn, imgs[:5], bs=2, tta=False)
    ft = arcface_features(learn, imgs[:5], bs=2, tta=True)
    fm = arcface_features(learn, imgs[:5, :, ::-1], bs=2, tta=False)
    assert f.shape == (5, 16) and ft.shape == (5, 32) and f.dtype == torch.float32 and f.device.type == 'cpu'
    torch.testing.assert_close(ft.norm(dim=1), torch.ones(5))
    s, st = arcface_similarity(learn, f, f), arcface_similarity(learn, ft, ft)
    assert s.dtype == np.float32 and s.shape == (5, 5)
    np.testing.assert_allclose(np.diag(s), 1, atol=1e-5)
    # with TTA the cosine is the mean of photo-vs-photo and mirror-vs-mirror cosines
    np.testing.assert_allclose(st, (s + arcface_similarity(learn, fm, fm))/2, atol=1e-5)
    cs, cids = arcface_class_scores(learn, imgs[:5], tta=False)
    assert cs.shape == (5, 6) and cids == learn.dls.vocab
    full = torch.cat([learn.model.eval()(x) for x in __import__('whale_kernel.data', fromlist=['x']).img_batches(imgs[:5])]).detach()
    np.testing.assert_allclose(cs, full[:, :6].numpy(), atol=1e-5)

# --- pipeline ---------------------------------------------------------------------------------------------------------

def test_pipeline_runs_arcface(tmp_path):
    "`whale-kernel run --models arcface` end to end on a tiny synthetic competition: the learner contract holds"
    from whale_kernel.synth import make_synth
    from whale_kernel.pipeline import run
    from whale_kernel.metrics import check_submission
    import pandas as pd
    data = make_synth(tmp_path/'data', n_whales=8, seed=3, n_workers=1)
    s = run(data, tmp_path/'out', models=['arcface'], size=(32,64), bs=8, emb_dim=16, arcface_epochs=1)
    check_submission(tmp_path/'out'/'submission.csv', pd.read_csv(data/'solution.csv').Image)
    assert 0 <= s['valid']['arcface'] <= 1 and 0 <= s['test']['arcface'] <= 1
    assert (tmp_path/'out'/'models'/'arcface'/'arcface.pth').exists()
