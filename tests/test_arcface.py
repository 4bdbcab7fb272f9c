"Tests of whale_kernel.arcface: ArcFace maths against hand-written logits, sub-centres, dynamic margins, flip classes, imprinting, training, resume"
import math, numpy as np, pytest, torch, torch.nn.functional as F
from pathlib import Path
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from whale_kernel.core import TimeBudget
from whale_kernel.backbone import create_backbone
from whale_kernel.data import NEW_WHALE, array_dls, img_batches
from whale_kernel.train import load_checkpoint, SelectBest, frozen_size
from whale_kernel.pipeline import quiet_bars
from whale_kernel.arcface import (GeM, CosineHead, ArcFaceLoss, arc_margin, dynamic_margins, flip_labels, fold_flips, FlipClasses,
                                  oversample, imprint, arcface_model, arcface_learner, ViewDL, fit_arcface, arcface_features,
                                  arcface_similarity, arcface_class_scores, arcface_centre_scores, arcface_pseudo_round, Backbones, _frozen_views,
                                  thaw_share, _thaw)
from whale_kernel.core import get_preset
from whale_kernel.train import _set_freeze
from timm.models import group_parameters
from whale_kernel.train import pooled_views
from test_utils import toy_whales, tiny_preset, state, same_state

torch.set_num_threads(1)

# --- ArcFace maths ---------------------------------------------------------------------------------------------------

def _reference_logits(cos, y, s, m):
    "ArcFace logits written out: s·cos θ off target; s·cos(θ+m) on it while θ+m ≤ π, past that s·(cos θ − m·sin m) (monotone)"
    out = s*cos.clone().double()
    for i,j in enumerate(y.tolist()):
        c = float(cos[i, j]); th = math.acos(max(-1., min(1., c)))
        out[i, j] = s*(math.cos(th + m) if th <= math.pi - m else c - m*math.sin(m))
    return out.float()

@pytest.mark.parametrize('m', [0.5, 1.2])
def test_logits_match_the_hand_written_reference(m):
    torch.manual_seed(0)
    n_cls, d, s = 5, 16, 20.
    head = CosineHead(d, n_cls)
    y = torch.arange(12) % n_cls
    emb = torch.randn(12, d)
    emb[:4] = -head.weight.detach()[y[:4]] + 0.1*torch.randn(4, d)   # angles near π: the monotone branch
    with torch.no_grad():
        cos = head(emb)
        assert (cos.gather(1, y[:,None]) < -math.cos(m)).any() and (cos.gather(1, y[:,None]) > -math.cos(m)).any()
        ref = _reference_logits(cos, y, s, m)
        lf = ArcFaceLoss(s=s, m=m)
        torch.testing.assert_close(lf.logits(cos, y), ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lf(cos, y), F.cross_entropy(ref, y), atol=1e-4, rtol=1e-4)

def test_margin_hand_worked():
    cos = torch.tensor([[0.5, 0.2, -0.1]])
    out = arc_margin(cos, torch.tensor([0]), m=0.5)
    assert out[0,0].item() == pytest.approx(math.cos(math.pi/3 + 0.5), abs=1e-6)
    torch.testing.assert_close(out[0,1:], cos[0,1:])
    # beyond π - m the logit keeps decreasing with the angle (monotonic), instead of turning back up
    c = torch.linspace(-0.999, 0.999, 200)[:,None]
    phi = arc_margin(c, torch.zeros(200, dtype=torch.long), m=0.5)[:,0]
    assert (phi.diff() > 0).all()
    easy = arc_margin(torch.tensor([[-.3, .1]]), torch.tensor([0]), m=.5, easy_margin=True)
    assert easy[0, 0].item() == pytest.approx(-.3)                    # easy margin: no margin at negative cosines

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
    assert not torch.allclose(h3(e), full[..., 0])

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

def test_gem():
    x = torch.rand(2, 3, 4, 5) + .1
    torch.testing.assert_close(GeM(p=1.)(x), x.mean((2, 3)))
    torch.testing.assert_close(GeM(p=200.)(x), x.amax((2, 3)), atol=.03, rtol=0)
    assert GeM(learn_p=False).p.requires_grad is False and GeM().p.requires_grad

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
    assert oversample(np.arange(9), labs, 1).tolist() == list(range(9))

# --- imprinting, view batches ------------------------------------------------------------------------------------------

def _clusters(n_ids=5, per=4, c=512, seed=0):
    "Pooled features (N,C) of `n_ids` whales: a random centre each, plus noise; and their mirrored views"
    g = torch.Generator().manual_seed(seed)
    centres, mirror = torch.randn(n_ids, c, generator=g)*2, torch.randn(n_ids, c, generator=g)*2
    y = torch.arange(n_ids).repeat_interleave(per)
    x = centres[y] + .3*torch.randn(len(y), c, generator=g) + 5
    xm = mirror[y] + .3*torch.randn(len(y), c, generator=g) + 5
    return x, xm, y

def test_imprint_starts_at_the_class_centres():
    x, xm, y = _clusters()
    m = arcface_model('resnet10t', weights=None, n_ids=5, emb_dim=8, k=1, pool='avg')
    imprint(m, torch.cat([x, xm]), torch.cat([y, y]), 5, flipped=np.r_[np.zeros(len(y)), np.ones(len(y))], noise=0.)
    m.eval()
    with torch.no_grad():
        e = F.normalize(m.forward_head(torch.cat([x, xm]), pre_logits=True), dim=1)
        centres = torch.stack([F.normalize(e[:20][y == c].sum(0), dim=0) for c in range(5)])
        torch.testing.assert_close(F.normalize(m.head.weight[:5], dim=1), centres, atol=1e-5, rtol=1e-5)
        assert (m(x).argmax(1) == y).all() and (m(xm).argmax(1) == y + 5).all()        # mirrored photos: mirror classes
        assert (m.bn(m.fc(m.neck(torch.cat([x, xm])))).mean(0).abs() < 1e-4).all()     # centred embedding
    m3 = arcface_model('resnet10t', weights=None, n_ids=5, emb_dim=8, k=3, pool='avg')
    imprint(m3, x, y, 5, noise=.01)
    w = F.normalize(m3.head.weight, dim=1).view(10, 3, -1)
    assert (F.cosine_similarity(w[:5, 0:1], w[:5, 1:], dim=-1) > .99).all()            # sub-centres start together
    assert not torch.equal(w[:5, 0], w[:5, 1])                                          # but not equal

def test_view_dl():
    pv = torch.arange(3*6*2, dtype=torch.float32).view(3, 6, 2)                         # 3 views of 6 photos
    labels = np.array([0, 1, 2, 0, 1, 2])
    x, y = ViewDL([1, 4], pv=pv, labels=labels, n_ids=3, bs=2).do_batch([1, 4])
    torch.testing.assert_close(x, pv[0, [1, 4]])
    assert y.tolist() == [1, 1]
    torch.manual_seed(0)
    dl = ViewDL(np.arange(6), pv=pv, labels=labels, n_ids=3, random_view=True, bs=6)
    x, y = dl.do_batch(list(range(6)))
    v = (x[:, 0] - torch.arange(6)*2) // 12                                             # which view each row came from
    assert set(v.long().tolist()) != {0}
    assert (y == torch.as_tensor(labels) + 3*(v.long() % 2)).all()                     # odd (mirrored) views: mirror class
    assert len(dl.new(np.arange(3))) == 1 and dl.new().pv is pv

# --- learner ----------------------------------------------------------------------------------------------------------

def test_training_lowers_loss():
    set_seed(0)
    imgs, ids = toy_whales()
    known = np.flatnonzero(ids != NEW_WHALE)
    vocab = sorted(set(ids[known]))
    dls = array_dls(imgs, ids, known, None, vocab=vocab, bs=6, aug=False)
    learn = arcface_learner(dls, arcface_model('efficientnet_lite0', n_ids=len(vocab), emb_dim=16, flip=False), s=10., m=0.2)
    assert len(learn.splitter(learn.model)) == 3 and learn.loss_func.s == 10.
    xb, yb = next(iter(array_dls(imgs, ids, known, None, vocab=vocab, bs=len(known), aug=False, shuffle=False).train))
    def loss():
        with torch.no_grad(): return learn.loss_func(learn.model.eval()(xb), yb).item()
    before = loss()
    with quiet_bars(True): learn.fit(5, 1e-3)
    assert loss() < 0.85*before

def test_fine_tune_thaws_the_top_share_of_the_backbones_layer_groups():
    "`arcface_unfreeze`: 'all' trains every layer group of the backbone, 'late' its top half, a number that share of them"
    imgs, ids = toy_whales()
    known = np.flatnonzero(ids != NEW_WHALE); vocab = sorted(set(ids[known]))
    dls = array_dls(imgs, ids, known, None, vocab=vocab, bs=6, aug=False)
    model = arcface_model('efficientnet_lite0', n_ids=len(vocab), emb_dim=16, flip=False)
    bb = model.backbone; ps = dict(bb.named_parameters())
    groups = list(group_parameters(bb, bb.group_matcher(coarse=True)).values())
    assert len(groups) == 8 and thaw_share('all') == 1. and thaw_share('late') == .5 and thaw_share(1/3) == 1/3
    trained = {}
    for u in ('all', 'late', 1/3, 0.1):
        learn = arcface_learner(dls, model, thaw=thaw_share(u))
        _set_freeze(learn, _thaw(get_preset('cpu', arcface_unfreeze=u))['freeze'])
        per = [{ps[n].requires_grad for n in g} for g in groups]
        assert all(len(o) == 1 for o in per)                    # a group trains whole (its norm layers too) or not at all
        trained[u] = [o == {True} for o in per]
        assert all(p.requires_grad for n,p in model.named_parameters() if not n.startswith('backbone'))   # neck, head
    assert trained['all'] == [True]*8                         # stem, blocks 0-6
    assert trained['late'] == [False]*4 + [True]*4            # blocks 3-6
    assert trained[1/3] == [False]*5 + [True]*3               # blocks 4-6
    assert trained[0.1] == [False]*7 + [True]                 # block 6 alone
    for bad in ('top', 0, 1.5, True):
        with pytest.raises(ValueError, match='arcface_unfreeze'): get_preset('cpu', arcface_unfreeze=bad)

def test_fit_arcface_checks_input():
    imgs, ids = toy_whales()
    with pytest.raises(ValueError, match='photos but'): fit_arcface(imgs, ids[:-1], np.arange(5), preset=tiny_preset())
    with pytest.raises(ValueError, match='no known whale'):
        fit_arcface(imgs, ids, np.flatnonzero(ids == NEW_WHALE), preset=tiny_preset())
    with pytest.raises(ValueError, match='Unknown preset field'): fit_arcface(imgs, ids, np.arange(5), preset=tiny_preset(), freeze=1)
    with pytest.raises(ValueError, match='arcface_mode'): fit_arcface(imgs, ids, np.arange(5), preset=tiny_preset(), arcface_mode='half')

TR, VA = np.arange(21), np.arange(0, 18, 3)       # all photos train; one photo of each whale also scores validation

@pytest.fixture(scope='module')
def frozen(tmp_path_factory):
    imgs, ids = toy_whales(noise=False)
    path = tmp_path_factory.mktemp('arcface')
    with quiet_bars(True): learn = fit_arcface(imgs, ids, TR, VA, preset=tiny_preset(arcface_mode='frozen'), path=path, arcface_epochs=(3, 3))
    return learn, imgs, ids, path

def test_fit_frozen(frozen):
    learn, imgs, ids, path = frozen
    assert learn.model.head.n_classes == 12                              # 6 known whales, doubled by the mirror classes
    assert [o['stage'] for o in learn.fit_log] == ['neck'] and len(learn.fit_log[0]['secs']) == 3
    assert len(learn.selector.curve) == 3 and learn.kept in ('step 0', 'epoch 0', 'epoch 1', 'epoch 2')
    assert not any(p.requires_grad for p in learn.model.backbone.parameters())
    ck = load_checkpoint(path/'arcface.pth')
    assert (ck['stage'], ck['epoch']) == ('neck', 2) and ck['vocab'] == [f'w{i}' for i in range(6)]

def test_fit_frozen_resumes_finished_and_refuses_other_data(frozen, wklog):
    learn, imgs, ids, path = frozen
    with quiet_bars(True): again = fit_arcface(imgs, ids, TR, VA, preset=tiny_preset(arcface_mode='frozen'), path=path, arcface_epochs=(3, 3))
    assert again.fit_log == [] and again.kept == learn.kept                   # finished: trains nothing, same choice
    assert same_state(state(again.model), state(learn.model))
    with quiet_bars(True): other = fit_arcface(imgs, ids, TR[ids[TR] != 'w0'], preset=tiny_preset(arcface_mode='frozen'), path=path, arcface_epochs=(2, 2))
    assert 'checkpoint is for another run' in wklog.text and len(other.fit_log[0]['secs']) == 2

def test_frozen_model_sees_the_pretraining_side():
    "A frozen ArcFace takes `frozen_res` (photos scaled up to its backbone's pretraining side); in 'auto' the frozen phase is the fine-tune's step 0, at the photos' own size"
    imgs, ids = toy_whales(noise=False)
    with quiet_bars(True):
        fr = fit_arcface(imgs, ids, TR, VA, preset=tiny_preset(arcface_mode='frozen', frozen_res='native'), arcface_epochs=(1, 1))
        au = fit_arcface(imgs, ids, TR, VA, preset=tiny_preset(arcface_mode='auto', frozen_res='native'), arcface_epochs=(1, 1), arcface_ft_epochs=(1, 1))
    assert fr.wk['sizes'] == [frozen_size(fr.model.backbone, (32, 64))] and fr.wk['sizes'][0][0] > 32
    assert au.wk['sizes'] == [None]
    f = arcface_features(fr, imgs[:4])
    np.testing.assert_allclose(arcface_class_scores(fr, imgs[:4])[0], arcface_centre_scores(fr, f)[0], atol=1e-4)   # both at that size
    fr.wk = {**fr.wk, 'sizes': [None]}
    assert f.shape == arcface_features(fr, imgs[:4]).shape and not torch.allclose(f, arcface_features(fr, imgs[:4]), atol=1e-3)

def test_features_similarity_and_flip_tta(frozen):
    learn, imgs, ids, path = frozen
    f, ft = arcface_features(learn, imgs[:5], tta=False), arcface_features(learn, imgs[:5])
    fm = arcface_features(learn, imgs[:5, :, ::-1].copy())
    assert f.shape == (5, 16) and ft.shape == (5, 32) and f.dtype == torch.float32 and f.device.type == 'cpu'
    torch.testing.assert_close(ft[:, :16], f)
    torch.testing.assert_close(torch.cat([fm[:, 16:], fm[:, :16]], 1), ft, atol=1e-4, rtol=1e-4)   # the mirror swaps the views
    torch.testing.assert_close(arcface_features(learn, imgs, idxs=[3, 1])[:, :16], arcface_features(learn, imgs[[3, 1]])[:, :16])
    s, st = arcface_similarity(learn, f, f), arcface_similarity(learn, ft, ft)
    assert s.dtype == np.float32 and s.shape == (5, 5)
    np.testing.assert_allclose(np.diag(st), 1, atol=1e-5)
    c = lambda a: (F.normalize(a, dim=1) @ F.normalize(a, dim=1).T).numpy()
    np.testing.assert_allclose(st, (c(ft[:, :16]) + c(ft[:, 16:]))/2, atol=1e-5)          # the mean over the two views

def test_budget_stops_training():
    imgs, ids = toy_whales()
    with quiet_bars(True): learn = fit_arcface(imgs, ids, TR, VA, preset=tiny_preset(), budget=TimeBudget(0), arcface_epochs=(5, 5))
    assert learn.halted == 'budget' and len(learn.fit_log[0]['secs']) == 1

def _thawed(learn):
    bb = [p.requires_grad for p in learn.model.backbone.parameters()]
    return any(bb), all(bb)

class _KeepLast(SelectBest):
    "A selector that always keeps the last epoch: forces the 'fine-tune kept' branch"
    def choose(self, learn): return f'epoch {len(self.hist) - 1}'

@pytest.mark.parametrize('keep', [False, True])
def test_fit_auto_keeps_the_fine_tune_only_when_validation_says_so(keep, tmp_path, monkeypatch):
    "'auto': the frozen result is the fine-tune's step 0; the fine-tune's weights and photo path are used only when it is kept"
    import whale_kernel.arcface as A
    if keep: monkeypatch.setattr(A, 'SelectBest', _KeepLast)
    imgs, ids = toy_whales()
    kw = dict(preset=tiny_preset(select_z=1e9), path=tmp_path, cache_dir=tmp_path/'cache', arcface_epochs=(2, 2), arcface_ft_epochs=(2, 2))
    with quiet_bars(True): learn = fit_arcface(imgs, ids, TR, VA, **kw)
    assert [(o['stage'], len(o['secs'])) for o in learn.fit_log] == [('neck', 2), ('thaw', 2)]
    assert len(learn.selectors) == 2 and [len(o.curve) for o in learn.selectors] == [2, 2]
    assert [o.lost_z for o in learn.selectors] == [2., 0.]   # the fine-tune, a trial, halves its patience once it trails step 0 at all
    thaw = learn.selectors[1]
    if not keep:                                  # an impossible bar: the frozen model, scored from the feature cache
        assert learn.kept == 'step 0 (fine-tune not kept)' and learn.wk['frozen']
        assert same_state(state(learn.model), thaw.base_sd)
    else:                                         # kept: the top of the backbone trained, photos go through it
        assert learn.kept == 'epoch 1, then fine-tune epoch 1' and not learn.wk['frozen']
        assert not same_state(state(learn.model), thaw.base_sd)
        assert _thawed(learn) == (True, False)    # the `cpu` preset's top third: the early layers stayed frozen
        assert load_checkpoint(tmp_path/'arcface_thaw.pth')['stage'] == 'thaw'
    f = arcface_features(learn, imgs[:3], tta=False)
    assert f.shape == (3, 16) and torch.isfinite(f).all()
    if not keep:
        with quiet_bars(True): again = fit_arcface(imgs, ids, TR, VA, **kw)  # both phases finished: nothing trains
        assert again.fit_log == [] and again.kept == learn.kept and again.wk['frozen']
        torch.testing.assert_close(arcface_features(again, imgs[:3], tta=False), f)

def test_fit_auto_moves_a_frozen_model_to_its_own_backbone(tmp_path, wklog):
    "'auto', the fine-tune not kept, `arcface_frozen_arch` set: the frozen model is rebuilt on that backbone, checkpointed in its folder"
    imgs, ids = toy_whales()
    kw = dict(preset=tiny_preset(select_z=1e9, arcface_frozen_arch='resnet14t'), path=tmp_path, cache_dir=tmp_path/'cache',
              arcface_epochs=(2, 2), arcface_ft_epochs=(2, 2))
    with quiet_bars(True): learn = fit_arcface(imgs, ids, TR, VA, **kw)
    assert learn.kept == 'step 0 on resnet14t (fine-tune of resnet10t not kept)' and learn.wk['frozen']
    assert learn.wk['tags'] == ['resnet14t-random'] and 'the frozen model moves to resnet14t' in wklog.text
    assert [o['stage'] for o in learn.fit_log] == ['neck', 'thaw', 'neck'] and len(learn.selectors) == 3
    assert load_checkpoint(tmp_path/'resnet14t'/'arcface.pth')['arch'] == 'resnet14t'
    f = arcface_features(learn, imgs[:3], tta=False)
    assert f.shape == (3, 16) and torch.isfinite(f).all()
    with quiet_bars(True): again = fit_arcface(imgs, ids, TR, VA, **kw)    # every phase from its checkpoint: nothing trains
    assert again.fit_log == [] and again.kept == learn.kept
    torch.testing.assert_close(arcface_features(again, imgs[:3], tta=False), f)
    # the same arch as the fine-tune's, or none: no move
    for alt in (None, 'resnet10t'):
        kw2 = {**kw, 'preset': tiny_preset(select_z=1e9, arcface_frozen_arch=alt), 'path': tmp_path/f'same_{alt}'}
        with quiet_bars(True): same = fit_arcface(imgs, ids, TR, VA, **kw2)
        assert same.kept == 'step 0 (fine-tune not kept)' and same.wk['tags'] == ['resnet10t-random']
    # weights from a state-dict file are the fine-tuned arch's alone: no move either
    sd = tmp_path/'resnet10t.pth'; torch.save(create_backbone('resnet10t', None).state_dict(), sd)
    kw3 = {**kw, 'preset': tiny_preset(select_z=1e9, arcface_frozen_arch='resnet14t', weights=str(sd)), 'path': tmp_path/'file'}
    with quiet_bars(True): same = fit_arcface(imgs, ids, TR, VA, **kw3)
    assert same.kept == 'step 0 (fine-tune not kept)' and 'stays on resnet10t, whose weights come from' in wklog.text

def test_fit_auto_moves_a_frozen_model_to_backbones_side_by_side(tmp_path, wklog):
    "`arcface_frozen_arch` a tuple: the frozen model sees every backbone's pooled features, each L2-normalised, concatenated, each at its own pretraining side"
    imgs, ids = toy_whales()
    pair = ('resnet10t', 'resnet14t')
    kw = dict(preset=tiny_preset(select_z=1e9, arcface_frozen_arch=list(pair), frozen_res='native'), path=tmp_path,
              cache_dir=tmp_path/'cache', arcface_epochs=(2, 2), arcface_ft_epochs=(1, 1))
    with quiet_bars(True): learn = fit_arcface(imgs, ids, TR, VA, **kw)
    assert learn.kept == 'step 0 on resnet10t+resnet14t (fine-tune of resnet10t not kept)' and learn.wk['frozen']
    bb = learn.model.backbone
    assert isinstance(bb, Backbones) and [b.pretrained_cfg['architecture'] for b in bb.parts] == list(pair)
    assert bb.num_features == sum(b.num_features for b in bb.parts) == learn.model.neck.num_features
    assert learn.wk['tags'] == ['resnet10t-random', 'resnet14t-random']
    assert learn.wk['sizes'] == [frozen_size(b, (32, 64)) for b in bb.parts] and all(s[0] > 32 for s in learn.wk['sizes'])
    pv = _frozen_views(bb, imgs, 2, learn.wk)
    one = lambda b, s: F.normalize(pooled_views(b, imgs, views=2, size=s), dim=-1)
    torch.testing.assert_close(pv, torch.cat([one(b, s) for b,s in zip(bb.parts, learn.wk['sizes'])], -1), atol=1e-4, rtol=1e-4)
    f = arcface_features(learn, imgs[:3]); assert f.shape == (3, 32) and torch.isfinite(f).all()
    np.testing.assert_allclose(arcface_class_scores(learn, imgs[:3])[0], arcface_centre_scores(learn, f)[0], atol=1e-5)
    with pytest.raises(NotImplementedError, match='cached pooled views'): learn.model(torch.zeros(1, 3, 32, 64))
    assert load_checkpoint(tmp_path/'resnet10t+resnet14t'/'arcface.pth')['arch'] == 'resnet10t+resnet14t'
    with quiet_bars(True): again = fit_arcface(imgs, ids, TR, VA, **kw)     # resumed from the checkpoints: nothing trains
    assert again.fit_log == [] and again.kept == learn.kept
    torch.testing.assert_close(arcface_features(again, imgs[:3]), f)
    # a pseudo-label round on the pair: the test photos' plain and mirrored views stand in for their augmented ones
    with quiet_bars(True): pl = arcface_pseudo_round(again, imgs, ids, TR, imgs[VA], [0, 1], list(ids[VA][:2]), preset=tiny_preset(), arcface_epochs=(1, 1))
    assert pl.fit_log[-1]['stage'] == 'pseudo' and torch.isfinite(arcface_features(pl, imgs[:3])).all()
    # backbones side by side are frozen features: a model that fine-tunes takes one
    with pytest.raises(ValueError, match='frozen model only'):
        fit_arcface(imgs, ids, TR, VA, preset=tiny_preset(arcface_mode='auto'), archs=pair)

def test_fit_auto_without_validation_or_time_stays_frozen(wklog):
    imgs, ids = toy_whales()
    with quiet_bars(True): learn = fit_arcface(imgs, ids, TR, None, preset=tiny_preset(), arcface_epochs=(2, 2))
    assert [o['stage'] for o in learn.fit_log] == ['neck'] and learn.wk['frozen'] and 'no validation rows' in wklog.text
    with quiet_bars(True): learn = fit_arcface(imgs, ids, TR, VA, preset=tiny_preset(), budget=TimeBudget(0.5), arcface_epochs=(2, 2))
    assert [o['stage'] for o in learn.fit_log] == ['neck'] and 'no time to fine-tune' in wklog.text

def test_fit_finetune():
    imgs, ids = toy_whales()
    with quiet_bars(True):
        learn = fit_arcface(imgs, ids, TR, VA, preset=tiny_preset(), arcface_mode='finetune', arcface_ft_epochs=(2, 2), arcface_freeze_epochs=1,
                            arcface_unfreeze='all')
    assert [(o['stage'], len(o['secs'])) for o in learn.fit_log] == [('head', 1), ('body', 2)]
    assert all(p.requires_grad for p in learn.model.backbone.parameters())
    f, fm = arcface_features(learn, imgs[:4]), arcface_features(learn, imgs[:4, :, ::-1].copy())
    torch.testing.assert_close(torch.cat([fm[:, 16:], fm[:, :16]], 1), f, atol=1e-4, rtol=1e-4)
    cs, cids = arcface_class_scores(learn, imgs[:4], tta=False)
    assert cs.shape == (4, 6) and cids == [f'w{i}' for i in range(6)]
    with torch.no_grad(): e = learn.model.eval()(torch.cat(list(__import__('whale_kernel.data', fromlist=['x']).img_batches(imgs[:4]))))
    np.testing.assert_allclose(cs, e[:, :6].numpy(), atol=1e-5)
    rows = np.array([5, 1, 3])                                    # rows by index, as the fine-tune's selection reads them
    np.testing.assert_allclose(arcface_class_scores(learn, imgs, idxs=rows)[0], arcface_class_scores(learn, imgs[rows])[0], atol=1e-5)

def test_finetune_features_in_eval_mode_whatever_the_mode():
    from types import SimpleNamespace
    imgs, ids = toy_whales()
    m = arcface_model('resnet10t', weights=None, n_ids=6, emb_dim=16).train()
    learn = SimpleNamespace(model=m, wk=dict(frozen=False))
    f = arcface_features(learn, imgs[:6])
    assert m.training
    torch.testing.assert_close(f, arcface_features(SimpleNamespace(model=m.eval(), wk=dict(frozen=False)), imgs[:6]))

def test_class_scores_frozen(frozen):
    learn, imgs, ids, path = frozen
    cs, cids = arcface_class_scores(learn, imgs[:4], tta=False)
    assert cs.shape == (4, 6) and cids == [f'w{i}' for i in range(6)]

# --- a second round on pseudo-labels (issue 8 item 6) ------------------------------------------------------------------

from whale_kernel.arcface import arcface_pseudo_round, _Rows
from whale_kernel.train import plan_epochs
from whale_kernel.core import get_preset

def test_rows_view_reads_both_arrays_without_a_copy():
    a = np.arange(5*2*3*3, dtype=np.uint8).reshape(5, 2, 3, 3); b = a[::-1] + 100
    x = _Rows(a, [4, 0], b, [1, 2])
    assert len(x) == 4
    np.testing.assert_array_equal(np.stack([x[i] for i in range(4)]), np.stack([a[4], a[0], b[1], b[2]]))
    np.testing.assert_array_equal(x[-1], b[2]); np.testing.assert_array_equal(x[np.int64(1)], a[0])
    with pytest.raises(IndexError): x[4]

@pytest.mark.parametrize('mode', ['frozen', 'finetune'])
def test_pseudo_round_trains_on_the_named_test_photos_and_resumes(mode, tmp_path):
    "The round trains the kept weights on the train photos plus the named test photos, checkpoints, and a rerun only loads it"
    imgs, ids = toy_whales()
    timgs = imgs[[1, 4, 7, 19]][:, :, ::-1].copy()               # 'test' photos: mirrored train photos of w0, w1, w2 and a new_whale
    p = tiny_preset(arcface_mode=mode, arcface_epochs=(2, 2), arcface_ft_epochs=(1, 1), arcface_freeze_epochs=0,
                    arcface_steps=40, arcface_ft_steps=40, pseudo_round=0.5)
    with quiet_bars(True):
        learn = fit_arcface(imgs, ids, TR, VA, preset=p, path=tmp_path, cache_dir=tmp_path/'cache')
        before = state(learn.model)
        out = arcface_pseudo_round(learn, imgs, ids, TR, timgs, [0, 1, 2], ['w0', 'w1', 'w2'], preset=p, path=tmp_path)
    assert out is not learn and same_state(state(learn.model), before)   # a copy trained: the model that was scored is as it was
    n_rows = len(oversample(np.arange(18 + 3), np.r_[ids[:18], ['w0', 'w1', 'w2']], p.min_per_id))
    want = plan_epochs(n_rows, p.bs, 20, (1, (p.arcface_epochs if mode == 'frozen' else p.arcface_ft_epochs)[1]))
    assert [(o['stage'], len(o['secs'])) for o in out.fit_log] == [('pseudo', want)]
    assert not same_state(state(out.model), before)
    assert out.kept.endswith(f'then a pseudo-label round (3 test photos, {want} epochs)')
    assert load_checkpoint(tmp_path/'arcface_pseudo.pth')['stage'] == 'pseudo'
    assert _thawed(out) == ((False, False) if mode == 'frozen' else (True, False))   # 'late': as the fine-tune thawed it
    with quiet_bars(True):                                           # the same call again: both checkpoints finished, nothing trains
        again = fit_arcface(imgs, ids, TR, VA, preset=p, path=tmp_path, cache_dir=tmp_path/'cache')
        again = arcface_pseudo_round(again, imgs, ids, TR, timgs, [0, 1, 2], ['w0', 'w1', 'w2'], preset=p, path=tmp_path)
    assert again.fit_log == [] and same_state(state(again.model), state(out.model))

def test_pseudo_round_checks_its_input(frozen):
    learn, imgs, ids, path = frozen
    with pytest.raises(ValueError, match='name no whale the model knows'):
        arcface_pseudo_round(learn, imgs, ids, TR, imgs, [0], ['w99'], preset=tiny_preset())
    with pytest.raises(ValueError, match='2 test rows but 1 names'):
        arcface_pseudo_round(learn, imgs, ids, TR, imgs, [0, 1], ['w0'], preset=tiny_preset())
    for bad in (-0.1, 1.5, True, 'half'):
        with pytest.raises(ValueError, match='Preset.pseudo_round must be a share'): get_preset('cpu', pseudo_round=bad)

def test_frozen_arch_preset_field():
    assert get_preset('cpu').arcface_frozen_arch == ('efficientnet_lite0', 'efficientnet_lite1')
    assert get_preset('cpu', arcface_frozen_arch=['a', 'b']).arcface_frozen_arch == ('a', 'b')      # a list (JSON) becomes a tuple
    assert get_preset('cpu', arcface_frozen_arch='a').arcface_frozen_arch == 'a'
    for bad in ((), 3, ('a', 2), ('a', '')):
        with pytest.raises(ValueError, match='Preset.arcface_frozen_arch must be'): get_preset('cpu', arcface_frozen_arch=bad)


def test_fit_auto_cut_short_picks_up_its_fine_tune_checkpoint(tmp_path, wklog):
    "'auto' killed mid-fine-tune (a DDP run past its deadline), then called with no time: the fine-tune's checkpoint is judged, not thrown away"
    from whale_kernel.core import TimeBudget
    from whale_kernel.train import load_checkpoint
    imgs, ids = toy_whales()
    p = tiny_preset(arcface_mode='auto', arcface_epochs=(2, 2), arcface_ft_epochs=(4, 4), patience=100)
    class Kill(Callback):
        order = 95
        def after_epoch(self):
            if (tmp_path/'arcface_thaw.pth').exists(): raise KeyboardInterrupt('killed')
    import whale_kernel.arcface as A
    real = A.fit_stages
    def killing(learn, stages, fname, *a, **k):      # the kill lands in the fine-tune, after its first checkpoint
        if fname is not None and Path(fname).name == 'arcface_thaw.pth': learn.add_cb(Kill())
        return real(learn, stages, fname, *a, **k)
    A.fit_stages = killing
    try:
        with quiet_bars(True), pytest.raises(KeyboardInterrupt): fit_arcface(imgs, ids, TR, VA, preset=p, path=tmp_path)
    finally: A.fit_stages = real
    assert load_checkpoint(tmp_path/'arcface_thaw.pth')['epoch'] == 0
    wklog.clear()
    with quiet_bars(True): learn = fit_arcface(imgs, ids, TR, VA, preset=p, path=tmp_path, budget=TimeBudget(0))
    assert 'no time to fine-tune' not in wklog.text and 'no time for epoch 1 of stage thaw' in wklog.text
    assert learn.fit_log == [] and len(learn.selectors) == 2 and len(learn.selectors[1].hist) == 1   # judged on its one epoch
    assert 'fine-tune' in learn.kept

def test_whitening_sees_the_training_rows_only(monkeypatch):
    "Held-out photos stay out of the imprinted whitening, as test photos do: changing them leaves the neck's fit unchanged"
    import whale_kernel.arcface as A
    seen = []
    def spy(model, pooled, labels, n_ids, flipped=None, noise=0.01, white=None):
        seen.append(white.clone()); return imprint(model, pooled, labels, n_ids, flipped, noise, white)
    monkeypatch.setattr(A, 'imprint', spy)
    imgs, ids = toy_whales(noise=False)
    tr = np.setdiff1d(np.arange(len(ids)), VA)
    other = imgs.copy(); other[VA] = 255 - other[VA]                   # the held-out photos, and nothing else, change
    with quiet_bars(True):
        for x in (imgs, other):
            fit_arcface(x, ids, tr, VA, preset=tiny_preset(arcface_mode='frozen'), arcface_epochs=(1, 1), budget=TimeBudget(0))
    assert len(seen) == 2 and len(seen[0]) == 2*len(tr)                 # plain and mirrored views of the training rows
    torch.testing.assert_close(seen[0], seen[1])

# --- fine-tune on a cached trunk ---------------------------------------------------------------------------------------

from whale_kernel.arcface import trunk_cut, TopNet, trunk_views
from whale_kernel.core import seed_everything

def test_trunk_cut_and_top_net_read_as_the_whole_network():
    "The trunk is the stem and the blocks below the thawed share; the top read from its cached output embeds as the whole net does"
    imgs, ids = toy_whales()
    model = arcface_model('efficientnet_lite0', weights=None, n_ids=6, emb_dim=16).eval()
    assert trunk_cut(model, 1/3) == 4 and trunk_cut(model, .5) == 3 and trunk_cut(model, 1.) == 0
    assert trunk_cut(arcface_model('resnet10t', weights=None, n_ids=6, emb_dim=16), 1/3) == 0   # not the EfficientNet family
    idx = [0, 5, 19]
    tv = trunk_views(model, 4, imgs, idx, views=4, seed=3)
    assert tv.shape[:2] == (4, 3) and tv.dtype == torch.bfloat16
    top = TopNet(model, 4).eval()
    assert top.fc is model.fc and top.backbone is model.backbone            # it reads as `net` where it has no attribute of its own
    with torch.no_grad():
        whole = [model.embed(torch.cat(list(img_batches(imgs, idx, flip=f)))) for f in (False, True)]
        for v in (0, 1):                                                     # plain, then mirrored
            torch.testing.assert_close(top.embed(tv[v]), whole[v], atol=0.05*float(whole[v].abs().max()), rtol=0.05)
    assert not torch.equal(tv[2], tv[0]) and not torch.equal(tv[3], tv[1])   # augmented views
    torch.testing.assert_close(trunk_views(model, 4, imgs, idx, views=4, seed=3), tv, atol=0, rtol=0)   # the same seed: the same views
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match='arcface_trunk_views'): get_preset('cpu', arcface_trunk_views=bad)

@pytest.mark.parametrize('views', [0, 4])
def test_fit_auto_fine_tunes_the_top_on_the_trunk_cache(views, tmp_path, monkeypatch):
    "A kept fine-tune trains the blocks above the trunk alone, whether it reads the trunk's cache or photos; the cache leaves the trunk's batch norm as it was, and the round reads it too"
    import whale_kernel.arcface as A
    monkeypatch.setattr(A, 'SelectBest', _KeepLast)
    imgs, ids = toy_whales()
    p = tiny_preset(arch='efficientnet_lite0', select_z=1e9, arcface_epochs=(1, 1), arcface_ft_epochs=(2, 2),
                    arcface_unfreeze=1/3, arcface_trunk_views=views, pseudo_round=0.5)
    seed_everything(p.seed)                                                  # the weights `fit_arcface` starts from
    model = arcface_model('efficientnet_lite0', weights=None, n_ids=6, emb_dim=16, k=p.arcface_k)
    before = {k: v.clone() for k,v in model.backbone.state_dict().items()}
    with quiet_bars(True): learn = fit_arcface(imgs, ids, TR, VA, preset=p, path=tmp_path)
    assert type(learn.model).__name__ == 'ArcFaceNet' and 'fine-tune' in learn.kept   # photos from here on
    assert load_checkpoint(tmp_path/'arcface_thaw.pth')['trunk'] == (4 if views else 0)
    sd = learn.model.backbone.state_dict()
    trunk = [k for k in sd if k.split('.')[0] in ('conv_stem', 'bn1') or k.startswith(tuple(f'blocks.{i}.' for i in range(4)))]
    top = [k for k in sd if k.startswith(('blocks.5.', 'blocks.6.')) and k.endswith('weight')]
    stats = [k for k in trunk if k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    assert trunk and top and stats and all(torch.equal(sd[k], before[k]) for k in trunk if k not in stats)
    assert all(not torch.equal(sd[k], before[k]) for k in top)               # the top third trained
    # on the cache the trunk's batch norm never runs in training mode; on photos its statistics follow the batches
    assert all(torch.equal(sd[k], before[k]) for k in stats) == bool(views)
    assert ('trunk' in learn.wk) == bool(views)
    timgs = imgs[[1, 4, 7]][:, :, ::-1].copy()
    with quiet_bars(True):
        out = arcface_pseudo_round(learn, imgs, ids, TR, timgs, [0, 1, 2], ['w0', 'w1', 'w2'], preset=p, path=tmp_path)
    assert type(out.model).__name__ == 'ArcFaceNet' and out.model is not learn.model
    assert load_checkpoint(tmp_path/'arcface_pseudo.pth')['trunk'] == (4 if views else False)
    f = arcface_features(out, imgs[:3], tta=False)
    assert f.shape == (3, 16) and torch.isfinite(f).all()
