"The training core (`whale_kernel.train`): precision policy, splitter, checkpoints and resume, budget, selection on validation, features"
import math, os
import numpy as np, pytest, torch, torch.nn.functional as F
from fastai.callback.core import Callback
from whale_kernel.core import TimeBudget
from whale_kernel.backbone import create_backbone
from whale_kernel.train import (amp_mode, amp_dtype, cpu_bf16, CPUAutocast, to_device_precision, backbone_splitter, save_checkpoint, load_checkpoint,
                                load_opt_state, BudgetCallback, SelectBest, Stage, fit_stages, eval_mode,
                                features, cosine_sim, pooled_views, pca_whitening, identity_bn, retrieval_aps, plan_epochs)
from whale_kernel.data import img_batches
from whale_kernel.metrics import paired_gain
from test_utils import toy_whales, tiny_learner, state, same_state

torch.set_num_threads(1)

# --- precision, splitter -----------------------------------------------------------------------------------------------

def test_amp_mode(monkeypatch):
    import whale_kernel.train as T
    monkeypatch.setattr(T, 'cpu_bf16', lambda: False)                                  # a CPU without native bf16: fp32
    assert amp_mode('cpu') is None and amp_dtype('cpu') is None
    monkeypatch.setattr(T, 'cpu_bf16', lambda: True)                                   # AVX512-BF16 / AMX: bf16
    assert amp_mode('cpu') == 'bf16' and amp_dtype('cpu') == torch.bfloat16
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda d=None: (7, 5))    # T4: no fast bf16
    assert amp_mode('cuda') == 'fp16' and amp_dtype('cuda') == torch.float16
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda d=None: (9, 0))    # H100
    assert amp_mode('cuda') == 'bf16' and amp_dtype('cuda') == torch.bfloat16

def test_cpu_bf16_reads_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: False, raising=False)
    assert cpu_bf16() is False
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: True, raising=False)
    assert cpu_bf16() is True

@pytest.mark.parametrize('native', [False, True])
def test_mixed_precision_on_cpu_only_with_native_bf16(monkeypatch, native):
    import whale_kernel.train as T
    monkeypatch.setattr(T, 'cpu_bf16', lambda: native)
    names = lambda l: [type(c).__name__ for c in l.cbs]
    learn = tiny_learner(); before = names(learn)
    amp = ['CPUAutocast'] if native else []                                 # never fastai's CUDA-only MixedPrecision
    assert names(to_device_precision(learn, mixed_precision=True, channels_last=False)) == before + amp
    assert names(to_device_precision(tiny_learner(), mixed_precision=False, channels_last=False)) == before
    assert names(to_device_precision(tiny_learner(), mixed_precision=True, channels_last=True)) == before + ['ChannelsLast'] + amp

def test_cpu_autocast_trains_and_leaves_no_autocast_behind():
    learn = tiny_learner(); learn.add_cb(CPUAutocast())
    before = state(learn.model)
    learn.fit(1, 1e-2)
    assert not same_state(before, state(learn.model))                       # it trained
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())  # fp32 master weights
    preds,_ = learn.get_preds()
    assert preds.dtype == torch.float32 and torch.isfinite(preds).all()
    assert not torch.is_autocast_enabled('cpu')

def test_backbone_splitter_groups():
    from whale_kernel.arcface import arcface_model
    m = arcface_model('resnet10t', weights=None, n_ids=3, emb_dim=8)
    gs = backbone_splitter(m)
    ps = [id(p) for g in gs for p in g]
    assert len(gs) == 3 and len(ps) == len(set(ps)) == len(list(m.parameters()))     # every parameter exactly once
    bb = {id(p) for p in m.backbone.parameters()}
    assert {id(p) for p in gs[0] + gs[1]} == bb and not {id(p) for p in gs[2]} & bb
    assert id(m.backbone.conv1[0].weight) in {id(p) for p in gs[0]} and id(m.backbone.layer4[0].conv1.weight) in {id(p) for p in gs[1]}
    learn = tiny_learner(); learn.create_opt()
    assert len(learn.opt.param_lists) == 3
    learn.freeze()
    assert not any(p.requires_grad for p in learn.model.backbone.parameters())
    assert all(p.requires_grad for p in learn.model.head.parameters())

# --- checkpoints -------------------------------------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path, wklog):
    learn = tiny_learner(); learn.fit(1, 1e-2)
    fn = tmp_path/'sub'/'ck.pth'
    save_checkpoint(fn, learn, stage='a', epoch=np.int64(3), vocab=['w1', 'w2'], arr=np.arange(3))
    assert fn.exists() and not list(fn.parent.glob('*.tmp'))
    ck = load_checkpoint(fn)                                    # weights_only: numpy values were made plain
    assert ck['stage'] == 'a' and ck['epoch'] == 3 and type(ck['epoch']) is int and ck['vocab'] == ['w1', 'w2']
    assert same_state(ck['model'], state(learn.model))
    other = tiny_learner(seed=1); other.create_opt()
    load_opt_state(other, ck['opt'])
    p0, q0 = next(iter(learn.opt.all_params()))[0], next(iter(other.opt.all_params()))[0]
    torch.testing.assert_close(other.opt.state[q0]['grad_avg'], learn.opt.state[p0]['grad_avg'])
    assert load_checkpoint(tmp_path/'missing.pth') is None
    (tmp_path/'bad.pth').write_bytes(b'not a checkpoint')
    assert load_checkpoint(tmp_path/'bad.pth') is None and 'unreadable checkpoint' in wklog.text

# --- budget and resume -------------------------------------------------------------------------------------------------

class Kill(Callback):
    "Raise (like a kill) after `n` trained epochs, once the checkpoint of the last one is written"
    order = 95
    def __init__(self, n): self.n, self.k = n, 0
    def before_train(self): self.k += 1
    def after_epoch(self):
        if self.k >= self.n: raise RuntimeError('killed')

class Probe(Callback):
    "Records the model at `before_fit` and counts trained epochs"
    order = 96
    def __init__(self): self.trained, self.at_start = [], []
    def before_fit(self): self.at_start.append(state(self.model))
    def before_train(self): self.trained.append(self.epoch)

def test_budget_callback_on_skipped_epochs():
    "The old crash: epochs skipped by `start_epoch` never ran `before_train`, `after_epoch` read a missing `t0`"
    learn = tiny_learner(); bcb = BudgetCallback(TimeBudget(10))
    learn.fit(3, 1e-2, start_epoch=2, cbs=[bcb])
    assert len(bcb.times) == 1 and learn.epoch == 2

def test_budget_callback_stops():
    learn, p = tiny_learner(), Probe()
    fit_stages(learn, [Stage('a', 4, 1e-2), Stage('b', 4, 1e-2)], budget=TimeBudget(0), cbs=[p])
    assert learn.halted == 'budget' and p.trained == [0] and [o['stage'] for o in learn.fit_log] == ['a']
    learn, p = tiny_learner(), Probe()
    fit_stages(learn, [Stage('a', 3, 1e-2)], budget=TimeBudget(10), reserve=3600, cbs=[p])   # the reserve counts
    assert learn.halted == 'budget' and p.trained == [0]

class Clock:
    "A stand-in for the `time` module of `whale_kernel.train`: every reading is 5 s after the last"
    def __init__(self): self.t = 0.
    def monotonic(self): self.t += 5.; return self.t

class Left:
    "A budget with `secs` always left"
    def __init__(self, secs): self.left = secs
    def allows(self, s): return self.left >= s

def test_budget_shortens_a_schedule_that_does_not_fit(monkeypatch):
    "10 planned epochs of 5 s (a clock that ticks 5 s a reading) in 26 s: after epoch 0 the rest is re-planned to 6 in all"
    import whale_kernel.train as T
    monkeypatch.setattr(T, 'time', Clock())
    learn, p = tiny_learner(), Probe()
    fit_stages(learn, [Stage('a', 10, 1e-2)], budget=Left(26.), cbs=[p])
    assert p.trained == [0, 1, 2, 3, 4, 5] and learn.fit_log[0]['epochs'] == 6 and not learn.halted
    assert len(p.at_start) == 2                           # the first schedule, then the shortened one
    learn, p = tiny_learner(), Probe()                   # without a budget nothing is re-planned
    fit_stages(learn, [Stage('a', 4, 1e-2)], budget=None, cbs=[p])
    assert p.trained == [0, 1, 2, 3] and len(p.at_start) == 1

STAGES = [Stage('head', 2, 1e-2, 'backbone'), Stage('body', 3, 1e-2)]

def test_fit_stages_resumes_mid_stage(tmp_path, wklog):
    fn = tmp_path/'ck.pth'
    with pytest.raises(RuntimeError, match='killed'):
        fit_stages(tiny_learner(), STAGES, fn, TimeBudget(10), cbs=[Kill(3)])       # head 0, head 1, body 0, killed
    ck = load_checkpoint(fn)
    assert (ck['stage'], ck['epoch']) == ('body', 0) and ck['secs_per_epoch'] > 0
    learn, p = tiny_learner(seed=1), Probe()
    fit_stages(learn, STAGES, fn, TimeBudget(10), cbs=[p])                            # budget callback attached, as always
    assert 'resuming after body epoch 0' in wklog.text
    assert same_state(p.at_start[0], ck['model'])                                     # the killed run's weights ...
    assert p.trained == [1, 2] and [(o['stage'], o['start'], len(o['secs'])) for o in learn.fit_log] == [('body', 1, 2)]
    ck = load_checkpoint(fn)                                                          # ... in the stage it was in
    assert (ck['stage'], ck['epoch']) == ('body', 2) and same_state(ck['model'], state(learn.model))
    again, p = tiny_learner(seed=2), Probe()
    fit_stages(again, STAGES, fn, TimeBudget(10), cbs=[p])
    assert p.trained == [] and same_state(state(again.model), ck['model'])            # finished: loads, trains nothing

def test_fit_stages_resumes_after_a_finished_stage(tmp_path):
    fn = tmp_path/'ck.pth'
    with pytest.raises(RuntimeError, match='killed'):
        fit_stages(tiny_learner(), STAGES, fn, TimeBudget(10), cbs=[Kill(2)])
    assert (load_checkpoint(fn)['stage'], load_checkpoint(fn)['epoch']) == ('head', 1)
    learn, p = tiny_learner(seed=1), Probe()
    fit_stages(learn, STAGES, fn, TimeBudget(10), cbs=[p])
    assert p.trained == [0, 1, 2] and [o['stage'] for o in learn.fit_log] == ['body']

def test_resumed_without_time_trains_nothing_and_keeps_the_checkpoint(tmp_path, wklog):
    "A run cut short (a DDP deadline, a kill) resumed with no time left: the checkpoint's weights and selection are the result, no epoch more"
    fn, va = tmp_path/'ck.pth', lambda learn: np.linspace(0, 1, 8)
    with pytest.raises(RuntimeError, match='killed'):
        fit_stages(tiny_learner(), STAGES, fn, TimeBudget(10), select=SelectBest(va), cbs=[Kill(3)])   # head 0, head 1, body 0
    ck = load_checkpoint(fn)
    learn, p = tiny_learner(seed=1), Probe()
    fit_stages(learn, STAGES, fn, TimeBudget(0), select=SelectBest(va), cbs=[p])
    assert p.trained == [] and learn.fit_log == [] and learn.halted == 'budget'
    assert 'no time for epoch 1 of stage body' in wklog.text
    assert learn.kept is not None and len(learn.selector.hist) == 3                     # the selection history came back too
    fresh, p = tiny_learner(seed=1), Probe()                                             # a fresh fit still trains one epoch
    fit_stages(fresh, STAGES, tmp_path/'other.pth', TimeBudget(0), cbs=[p])
    assert p.trained == [0]

def test_fit_stages_ignores_another_runs_checkpoint(tmp_path, wklog):
    fn = tmp_path/'ck.pth'
    fit_stages(tiny_learner(), STAGES, fn, meta=dict(vocab=['a', 'b']))
    p = Probe(); fit_stages(tiny_learner(), STAGES, fn, meta=dict(vocab=['a', 'c']), cbs=[p])
    assert 'checkpoint is for another run' in wklog.text and p.trained == [0, 1, 0, 1, 2]

# --- selection on validation -------------------------------------------------------------------------------------------

def test_paired_gain():
    g, se = paired_gain([1, 1, 0, 1], [0, 1, 0, 0])
    assert g == pytest.approx(0.5) and se == pytest.approx(np.std([1, 0, 0, 1], ddof=1)/2)
    assert paired_gain([1.], [0.])[1] == math.inf

BASE = np.array([0., 1.]*10)                                      # per-photo AP@5 at step 0: MAP 0.5 on 20 photos
SMALL = BASE.copy(); SMALL[[0, 2]] = 1; SMALL[1] = 0               # +0.05 ± 0.09: within noise
BIG = BASE.copy(); BIG[::2] = 1                                    # +0.5 ± 0.11: clears it

class Record(Callback):
    "The model after every trained epoch"
    order = 86
    def __init__(self): self.sds = []
    def after_train(self): self.sds.append(None)
    def after_epoch(self):
        if self.sds and self.sds[-1] is None: self.sds[-1] = state(self.model)

def _select(curve, **kw):
    "A `SelectBest` whose `score` returns `BASE` at step 0, then `curve[i]` at epoch i"
    sel = SelectBest(None, **{**dict(patience=10, z=1., window=1), **kw})
    sel.score = lambda learn: BASE if sel.base is None else curve[len(sel.hist)]
    return sel

@pytest.mark.parametrize('curve,kept', [([BASE, SMALL, BASE], 'step 0'), ([SMALL, BIG, SMALL], 'epoch 1')])
def test_select_best_against_noise(curve, kept):
    learn, rec = tiny_learner(), Record(); s0 = state(learn.model)
    sel = _select(curve)
    fit_stages(learn, [Stage('a', 3, 1e-1)], select=sel, cbs=[rec])
    assert sel.best_i == 1 and learn.kept == kept and len(rec.sds) == 3
    want = s0 if kept == 'step 0' else rec.sds[1]
    assert same_state(state(learn.model), want) and not same_state(state(learn.model), rec.sds[-1])

def test_select_best_smooths_and_stops_early():
    c = [np.full(20, v) for v in (.2, .8, .2, .6, .6, .6, .1, .1, .1, .1)]
    sel = _select(c, window=1); fit_stages(tiny_learner(), [Stage('a', 6, 1e-2)], select=sel)
    assert sel.best_i == 1                                          # a one-epoch spike wins without smoothing ...
    sel = _select(c, window=3); fit_stages(tiny_learner(), [Stage('a', 6, 1e-2)], select=sel)
    assert sel.best_i == 5                                          # ... and loses with it
    learn, p = tiny_learner(), Probe()
    sel = _select(c, window=1, patience=2); fit_stages(learn, [Stage('a', 10, 1e-2)], select=sel, cbs=[p])
    assert learn.halted == 'early stop' and p.trained == [0, 1, 2, 3]

def test_select_best_cuts_a_curve_that_lost_ground():
    "Half the patience once the best epoch is `lost_z` SE below step 0; the full patience when level; none cut while climbing"
    low = np.zeros(20)                                               # 0.5 below BASE on every other photo: 4.4 SE
    climb = [np.r_[np.ones(k), np.zeros(20 - k)] for k in range(1, 11)]   # below BASE until epoch 9, a new best every epoch
    trained = {}
    for name,curve in [('lost', [low]*10), ('level', [BASE]*10), ('climbing', climb)]:
        learn, p = tiny_learner(), Probe(); sel = _select(curve, patience=4, warm=0.)     # lost: counted from epoch 0
        fit_stages(learn, [Stage('a', 10, 1e-2)], select=sel, cbs=[p]); trained[name] = p.trained
        assert sel.patience_now() == (2 if name == 'lost' else 4)
    assert trained['lost'] == [0, 1, 2]                              # best at epoch 0, no gain for 2
    assert trained['level'] == [0, 1, 2, 3, 4]                       # best at epoch 0, no gain for 4
    assert trained['climbing'] == list(range(10))
    trail = BASE.copy(); trail[1] = 0                                # 0.05 ± 0.05 below step 0: 1 SE, lost only for lost_z < 1
    for lost_z,want in [(2., [0, 1, 2, 3, 4]), (0., [0, 1, 2])]:
        learn, p = tiny_learner(), Probe(); sel = _select([trail]*10, patience=4, lost_z=lost_z, warm=0.)
        fit_stages(learn, [Stage('a', 10, 1e-2)], select=sel, cbs=[p]); assert p.trained == want

def test_select_best_waits_for_the_rate_to_peak():
    "Lost ground counts from the epoch in which the one-cycle rate peaks: a fine-tune's dip while it rises is not cut"
    low = np.zeros(20)                                               # far below step 0: lost ground, patience halved
    curve = [low]*4 + [BIG]*8                                        # the climb starts once the rate has peaked
    runs = {}
    for warm in (0., .25):
        learn, p = tiny_learner(), Probe(); sel = _select(curve, patience=4, lost_z=0., warm=warm)
        fit_stages(learn, [Stage('a', 12, 1e-2)], select=sel, cbs=[p]); runs[warm] = (p.trained, learn.kept)
    assert runs[0.] == ([0, 1, 2], 'step 0')                         # cut two epochs after epoch 0, in the rate's rise
    assert runs[.25][0][:6] == [0, 1, 2, 3, 4, 5] and runs[.25][1] == 'epoch 4'   # peak in epoch 3 of 12: the climb is seen
    learn, p = tiny_learner(), Probe(); sel = _select([low]*12, patience=4, lost_z=0.)
    fit_stages(learn, [Stage('a', 12, 1e-2)], select=sel, cbs=[p])
    assert p.trained == [0, 1, 2, 3, 4, 5] and learn.kept == 'step 0'   # no climb: cut 2 epochs after the peak (epoch 3)
    learn, p = tiny_learner(), Probe(); sel = _select([BASE]*12, patience=4)
    fit_stages(learn, [Stage('a', 12, 1e-2)], select=sel, cbs=[p])
    assert p.trained == [0, 1, 2, 3, 4]                              # level with step 0: the full patience, from epoch 0

def test_select_best_survives_a_kill(tmp_path):
    fn = tmp_path/'ck.pth'; curve = [SMALL, BIG, SMALL, SMALL]
    learn, rec = tiny_learner(), Record()
    with pytest.raises(RuntimeError, match='killed'):
        fit_stages(learn, [Stage('a', 4, 1e-2)], fn, select=_select(curve), cbs=[rec, Kill(2)])
    learn = tiny_learner(seed=1)
    fit_stages(learn, [Stage('a', 4, 1e-2)], fn, select=_select(curve))
    assert learn.kept == 'epoch 1' and same_state(state(learn.model), rec.sds[1])

def test_plan_epochs():
    assert plan_epochs(100, 10, 50, (1, 100)) == 5            # 10 steps an epoch
    assert plan_epochs(100, 10, 5, (3, 100)) == 3             # floor
    assert plan_epochs(10, 32, 600, (4, 60)) == 60            # fewer items than a batch: one step an epoch, then the ceiling
    assert plan_epochs(1000, 10, 250, (1, 100)) == 3          # rounded up

# --- features ----------------------------------------------------------------------------------------------------------

def test_eval_mode_restores():
    m = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.BatchNorm1d(3)); m.train(); m[1].eval()
    with eval_mode(m): assert not any(x.training for x in m.modules())
    assert m.training and m[0].training and not m[1].training

def test_features_flip_tta_and_size():
    imgs, _ = toy_whales(2, 2, 1)
    fn = lambda x: x.mean((2,)).flatten(1)                           # column means: mirroring reverses them
    f = features(fn, imgs, bs=2, device='cpu')
    ft = features(fn, imgs, idxs=[4, 0], tta=True, device='cpu')
    assert f.shape == (5, 3*64) and ft.shape == (2, 2*3*64)
    torch.testing.assert_close(ft[:, :192], f[[4, 0]])
    torch.testing.assert_close(ft[:, 192:], features(fn, imgs[[4, 0], :, ::-1], device='cpu'))
    assert features(fn, imgs, size=(16, 32), device='cpu').shape == (5, 3*32)

def test_cosine_sim_views():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 3*8, generator=g), torch.randn(7, 3*8, generator=g)
    per = [F.normalize(q[:, v*8:(v+1)*8], dim=1) @ F.normalize(k[:, v*8:(v+1)*8], dim=1).T for v in range(3)]
    s = cosine_sim(q, k, views=3, bs=2)
    assert s.dtype == np.float32 and s.shape == (5, 7)
    np.testing.assert_allclose(s, (sum(per)/3).numpy(), atol=1e-6)
    np.testing.assert_allclose(cosine_sim(q, k), (F.normalize(q, dim=1) @ F.normalize(k, dim=1).T).numpy(), atol=1e-6)
    assert not np.allclose(cosine_sim(q, k, views=3), cosine_sim(q, k))

def test_pooled_views_cache(tmp_path, wklog):
    imgs, _ = toy_whales(2, 2, 1)
    bb = create_backbone('resnet10t', weights=None).eval()
    seen = []; ff = bb.forward_features
    bb.forward_features = lambda x: seen.append(len(x)) or ff(x)
    rng = torch.get_rng_state()
    pv = pooled_views(bb, imgs, views=3, bs=8, cache_dir=tmp_path, tag='t')
    P = 4                                                     # BatchNorm folding's probe: two photos unfolded, then folded
    assert pv.shape == (3, 5, bb.num_features) and torch.equal(torch.get_rng_state(), rng)
    torch.testing.assert_close(pv[0], features(lambda x: bb.forward_head(ff(x), pre_logits=True), imgs))
    torch.testing.assert_close(pv[1], features(lambda x: bb.forward_head(ff(x), pre_logits=True), imgs[:, :, ::-1]))
    assert not torch.allclose(pv[2], pv[0]) and not torch.allclose(pv[2], pv[1])   # augmented
    assert sum(seen) == 15 + P and len(list(tmp_path.glob('pooled_t_*.pt'))) == 3
    seen.clear()
    torch.testing.assert_close(pooled_views(bb, imgs, views=3, cache_dir=tmp_path, tag='t'), pv)
    assert seen == []                                                                # all three from the cache
    pv2 = pooled_views(bb, imgs, views=3, aug_kw=dict(max_rotate=30.), cache_dir=tmp_path, tag='t')
    assert sum(seen) == 5 + P and torch.equal(pv2[:2], pv[:2])                           # only the augmented view depends on it
    seen.clear(); next(tmp_path.glob('pooled_t_*_v0.pt')).write_bytes(b'junk')
    torch.testing.assert_close(pooled_views(bb, imgs, views=2, cache_dir=tmp_path, tag='t'), pv[:2])
    assert 'unreadable cache' in wklog.text and sum(seen) == 10 + P
    seen.clear(); pooled_views(bb, imgs[:4], views=2, cache_dir=tmp_path, tag='t')
    assert sum(seen) == 8 + P                                                        # other photos: other files

def test_pooled_views_repairs_an_unreadable_cache(tmp_path):
    imgs, _ = toy_whales(2, 2, 1)
    bb = create_backbone('resnet10t', weights=None).eval()
    pv = pooled_views(bb, imgs, views=2, cache_dir=tmp_path, tag='t')
    next(tmp_path.glob('pooled_t_*_v0.pt')).write_bytes(b'junk')
    torch.testing.assert_close(pooled_views(bb, imgs, views=2, cache_dir=tmp_path, tag='t'), pv)
    seen = []; ff = bb.forward_features
    bb.forward_features = lambda x: seen.append(len(x)) or ff(x)
    pooled_views(bb, imgs, views=2, cache_dir=tmp_path, tag='t')
    assert seen == []

def test_pca_whitening():
    x = torch.randn(200, 6) @ torch.randn(6, 6) * torch.tensor([1, 5, .1, 2, 1, 3.]) + 4
    mu, W = pca_whitening(x, dims=4, shrink=0.)
    y = (x - mu) @ W.T
    assert W.shape == (4, 6)
    torch.testing.assert_close(y.T @ y / (len(y) - 1), torch.eye(4), atol=1e-3, rtol=0)    # white
    lam = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)
    mu, W = pca_whitening(x, dims=4)                                                   # shrunk: λ/(λ + mean λ)
    y = (x - mu) @ W.T
    torch.testing.assert_close(torch.diag(y.T @ y / (len(y) - 1)), lam[:4]/(lam[:4] + lam.mean()), atol=1e-3, rtol=1e-3)
    assert pca_whitening(torch.randn(5, 1) @ torch.ones(1, 6), dims=4)[1].shape[0] == 1   # rank 1: one direction

def test_identity_bn():
    bn = torch.nn.BatchNorm1d(3); x = torch.randn(50, 3)*torch.tensor([1., 4, .5]) + 2
    identity_bn(bn, x.mean(0), x.var(0, unbiased=False))
    torch.testing.assert_close(bn.eval()(x), x - x.mean(0), atol=1e-4, rtol=1e-4)     # centred, scale kept
    torch.testing.assert_close(bn.train()(x), x - x.mean(0), atol=1e-3, rtol=1e-3)    # batch statistics alike

def test_retrieval_aps():
    sims = np.array([[.9, .1, .5, .2], [.1, .2, .3, .9], [.9, .6, .95, .1]])
    g = ['a', 'b', 'new_whale', 'a']
    np.testing.assert_allclose(retrieval_aps(sims, ['a', 'b', 'b'], g), [1, 1/2, 1/2])   # the new_whale photo is no candidate
    np.testing.assert_allclose(retrieval_aps(sims, ['a', 'b', 'b'], g, reduce='mean'), [1, 1/2, 1])   # a: (.9+.1)/2 < b: .6

def test_an_early_stopped_fit_is_finished(tmp_path):
    c = [np.full(20, v) for v in (.8, .1, .1, .1, .1, .1)]
    fn = tmp_path/'ck.pth'
    learn = tiny_learner(); fit_stages(learn, [Stage('a', 6, 1e-2)], fn, select=_select(c, patience=2))
    assert learn.halted == 'early stop'
    p = Probe(); fit_stages(tiny_learner(), [Stage('a', 6, 1e-2)], fn, select=_select(c, patience=2), cbs=[p])
    assert p.trained == []

def test_features_fold_batchnorm_on_the_cpu_and_leave_the_model_as_it_was():
    from whale_kernel.train import fold_bn, eval_mode
    imgs, _ = toy_whales(2, 2, 1)
    bb = create_backbone('efficientnet_lite0', weights='offline').train()    # the cpu preset's backbone, with its real statistics
    kids, sd = list(bb.modules()), {k: v.clone() for k,v in bb.state_dict().items()}
    x = next(iter(img_batches(imgs, bs=len(imgs))))
    with torch.no_grad(), eval_mode(bb): ref = bb(x)
    with torch.no_grad(), eval_mode(bb), fold_bn(bb, lambda: bb(x)) as fb:
        assert len(fb.swaps) == 49 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
    f = features(bb, imgs)
    torch.testing.assert_close(f, ref, atol=1e-4*float(ref.abs().max()), rtol=1e-3)
    assert list(bb.modules()) == kids and bb.training and all(m.training for m in bb.modules())
    assert all(torch.equal(v, sd[k]) for k,v in bb.state_dict().items())          # weights and running statistics untouched
