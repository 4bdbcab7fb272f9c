"""Train throughput (img/s) of the project's ArcFace and Siamese learners against a plain PyTorch AMP loop, in one run.

    python bench/train_throughput.py [--quick] [--arch efficientnet_b0] [--size 256 512] [--bs 64] [--compile]

Learners are fed real JPEGs through the project's loaders: synthetic fluke photos (`make_synth`, or `--data DIR`) decoded
once by `cache_images` at H×W, then `array_dls` / `pair_dls` (epochs made long with repeated rows so that no epoch ends
inside the timing). The ceiling is a plain loop over the same network and loss on GPU-resident, channels_last tensors,
bf16 autocast (fp16 + GradScaler where bf16 is unsupported), fused AdamW. Warm-up steps are excluded and the timed
steps are CUDA-synchronised at both ends. Learner variants are cumulative, so each one measures one change:
`default` (as the learner ships) → `no_bar` → `adamw` (torch's fused AdamW through `OptimWrapper`) → `tuned`
(+ pinned memory, persistent workers); then single changes on `tuned`: `no_aug`, `nchw`, `fp32`, `no_cudnn_bench`
(cuDNN autotuning off, fastai's default), `cpu_cl` (CPU only: channels_last, which the learner applies on CUDA only),
`compile` (only with `--compile`).
Backbones are randomly initialised (throughput does not depend on the weights). Writes bench/results/train_throughput.json.
"""
import argparse, gc, inspect, os, time
from functools import partial
import numpy as np, torch
from _util import meta, write, cuda, cpu_threads, sync, synth_data, train_cache

def _kw(f, kw:dict) -> dict:
    "The items of `kw` that `f` accepts (so this keeps working while learner signatures change)"
    ps = inspect.signature(f).parameters
    if any(p.kind == p.VAR_KEYWORD for p in ps.values()): return kw
    return {k:v for k,v in kw.items() if k in ps}

def dev() -> torch.device: return torch.device('cuda' if cuda() else 'cpu')

def amp_dtype():
    "bf16 where the GPU supports it, else fp16; None on CPU (the learners train in fp32 there)"
    if not cuda(): return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

def rate(times, per_step:int) -> float:
    "Images/s from step `times`: total time on a GPU (steps overlap there), median step on a CPU (robust to a shared box)"
    return per_step / (float(np.sum(times))/len(times) if cuda() else float(np.median(times)))

def step_timer(warmup:int, steps:int):
    "A fastai callback timing `steps` train batches after `warmup` ones (CUDA-synchronised at both ends), then cancelling the fit"
    from fastai.callback.core import Callback, CancelFitException
    class StepTimer(Callback):
        order = 99
        def before_fit(self): self.i,self.times = 0,[]
        def after_batch(self):
            if not self.training: return
            self.i += 1
            if self.i == warmup: sync(); self.t = time.perf_counter()
            elif self.i > warmup:
                if self.i == warmup + steps: sync()
                t = time.perf_counter(); self.times.append(t - self.t); self.t = t
                if self.i == warmup + steps: raise CancelFitException()
    return StepTimer()

def time_learner(learn, warmup:int, steps:int, per_step:int) -> float:
    "Images/s of `learn.fit` over `steps` batches of `per_step` images after `warmup` batches"
    cb = step_timer(warmup, steps)
    learn.fit(1000, 1e-4, cbs=cb)
    if len(cb.times) < steps: raise RuntimeError(f'the train loader ran out after {cb.i} batches')
    return rate(cb.times, per_step)

def torch_adamw():
    "fastai `opt_func` for torch's AdamW (fused on CUDA, foreach on CPU)"
    from fastai.optimizer import OptimWrapper
    return partial(OptimWrapper, opt=torch.optim.AdamW, **({'fused': True} if cuda() else {'foreach': True}))

def _tune(learn, v:dict):
    "Apply the learner-side knobs of variant `v` to `learn`"
    from fastai.callback.progress import ProgressCallback
    learn.model.to(dev())   # before the optimizer is made (`unfreeze` makes it), as `fit_arcface` does
    if v.get('force_cl') and not any(type(c).__name__ == 'ChannelsLast' for c in learn.cbs):
        from fastai.callback.channelslast import ChannelsLast
        learn.add_cb(ChannelsLast())   # channels_last where the learner leaves it out (on a CPU)
    if not v.get('bar', True): learn.remove_cbs([c for c in learn.cbs if isinstance(c, ProgressCallback)])
    learn.unfreeze()   # full fine-tune: the whole backbone trains, as in the ceiling
    if v.get('compile'): learn.model.compile()
    return learn

def _cudnn(v:dict, f):
    "`f()` with cuDNN autotuning as variant `v` says (fastai leaves it off: `setup_cuda` is never called)"
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = v.get('cudnn_bench', True)
    try: return f()
    finally: torch.backends.cudnn.benchmark = prev

def _loader_kw(v:dict, workers:int) -> dict:
    if not v.get('pin'): return {}
    return dict(pin_memory=cuda(), persistent_workers=workers > 0)

# Variants: cumulative up to `tuned`, then one change each on `tuned`
ARC_VARIANTS = dict(
    default = dict(),
    no_bar  = dict(bar=False),
    adamw   = dict(bar=False, opt='adamw'),
    tuned   = dict(bar=False, opt='adamw', pin=True),
    no_aug  = dict(bar=False, opt='adamw', pin=True, aug=False),
    nchw    = dict(bar=False, opt='adamw', pin=True, cl=False),
    fp32    = dict(bar=False, opt='adamw', pin=True, amp=False),
    no_cudnn_bench = dict(bar=False, opt='adamw', pin=True, cudnn_bench=False),
    cpu_cl  = dict(bar=False, opt='adamw', pin=True, force_cl=True),
    compile = dict(bar=False, opt='adamw', pin=True, compile=True),
)
SIA_VARIANTS = dict(
    default = dict(),
    tuned   = dict(bar=False, opt='adamw', pin=True, cl=True),
)

def arcface_learner_v(imgs, labels, rows, vocab, a, v:dict):
    "The project's ArcFace learner on `array_dls` over cached photos, with the knobs of variant `v`"
    import whale_kernel.arcface as A
    from whale_kernel.data import array_dls
    w = v.get('workers', a.workers)
    kw = _kw(array_dls, dict(vocab=vocab, bs=a.bs, aug=v.get('aug', True), workers=w, device=dev()))
    try: dls = array_dls(imgs, labels, rows, None, **kw, **_loader_kw(v, w))
    except TypeError as e:                  # this array_dls sets pinned memory and persistent workers itself
        if 'multiple values' not in str(e): raise
        dls = array_dls(imgs, labels, rows, None, **kw)
    kw = dict(mixed_precision=v.get('amp', True), channels_last=v.get('cl', True))
    if v.get('opt') == 'adamw': kw['opt_func'] = torch_adamw()
    if 'model' in inspect.signature(A.arcface_learner).parameters:      # arcface_learner(dls, model, flip_ids=...)
        model = A.arcface_model(**_kw(A.arcface_model, dict(arch=a.arch, weights=None, n_ids=len(vocab))))
        learn = A.arcface_learner(dls, model, **_kw(A.arcface_learner, dict(flip_ids=len(vocab), **kw)))
    else: learn = A.arcface_learner(dls, **_kw(A.arcface_learner, dict(arch=a.arch, weights=None, **kw)))
    return _tune(learn, v)

def siamese_learner_v(imgs, pairs, a, v:dict):
    "The project's Siamese learner (full fine-tune) on `pair_dls` over cached photos, with the knobs of variant `v`"
    from whale_kernel.siamese import pair_dls, siamese_model, siamese_learner
    dls = pair_dls(imgs, pairs, None, **_kw(pair_dls, dict(bs=a.bs, size=getattr(a, 'resize', None), device=dev())))
    w = v.get('workers', a.workers)
    if v.get('pin'): dls.loaders[0] = dls.train.new(num_workers=w, **_loader_kw(v, w))   # pair_dls has no loader knobs
    model = siamese_model(**_kw(siamese_model, dict(arch=a.arch, weights=None, n_feats=a.n_feats)))
    kw = dict(freeze=0., mixed_precision=v.get('amp', True))
    if v.get('opt') == 'adamw': kw['opt_func'] = torch_adamw()
    learn = siamese_learner(dls, model, **_kw(siamese_learner, kw))
    if v.get('cl') and cuda() and not any(type(c).__name__ == 'ChannelsLast' for c in learn.cbs):
        from fastai.callback.channelslast import ChannelsLast
        learn.add_cb(ChannelsLast())                  # model and each batch in channels_last, as the ArcFace learner does
    return _tune(learn, v)

def plain_loop(model, loss_fn, batches, warmup:int, steps:int, per_step:int, dtype=None, channels_last:bool=True) -> float:
    "Images/s of a plain PyTorch train loop: autocast `dtype` (GradScaler for fp16), fused AdamW, GPU-resident `batches`"
    dev = torch.device('cuda' if cuda() else 'cpu')
    model = model.to(dev).train()
    if channels_last: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({'fused': True} if cuda() else {'foreach': True}))
    scaler = torch.amp.GradScaler('cuda', enabled=dtype == torch.float16)
    times = []
    for i in range(warmup + steps):
        if i == warmup: sync(); t = time.perf_counter()
        x,y = batches[i % len(batches)]
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt); scaler.update()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            if i == warmup + steps - 1: sync()
            times.append(time.perf_counter() - t); t = time.perf_counter()
    return rate(times, per_step)

def free():
    "Collect the last job's learner (fastai objects hold cycles) and its workers, and return its GPU memory"
    gc.collect()
    if cuda(): torch.cuda.empty_cache()

def _x(n, a, cl=True):
    dev = 'cuda' if cuda() else 'cpu'
    x = torch.randn(n, 3, *a.size, device=dev)
    return x.contiguous(memory_format=torch.channels_last) if cl else x

def ceiling_jobs(a, n_cls:int) -> dict:
    "Plain-loop jobs: the ArcFace net, the Siamese net, timm's classifier, ArcFace in NCHW (+ in fp16 with GradScaler on bf16 cards)"
    import timm, torch.nn.functional as F
    from whale_kernel.arcface import ArcFaceNet, ArcFaceLoss
    from whale_kernel.backbone import create_backbone
    dev, dt = ('cuda' if cuda() else 'cpu'), amp_dtype()
    ys = lambda n, hi: torch.randint(0, hi, (n,), device=dev)
    arc = lambda: ArcFaceNet(create_backbone(a.arch, weights=None), n_classes=n_cls)
    def sia():
        from whale_kernel.siamese import siamese_model
        return siamese_model(**_kw(siamese_model, dict(arch=a.arch, weights=None, n_feats=a.n_feats)))
    bce = lambda p, y: F.binary_cross_entropy_with_logits(p.float(), y)
    jobs = dict(
        arcface = lambda: plain_loop(arc(), ArcFaceLoss(), [(_x(a.bs, a), ys(a.bs, n_cls)) for _ in range(3)], a.warmup, a.steps, a.bs, dt),
        siamese = lambda: plain_loop(sia(), bce, [(_x(2*a.bs, a), ys(a.bs, 2).float()) for _ in range(3)], a.warmup, a.steps, 2*a.bs, dt),
        timm_ce = lambda: plain_loop(timm.create_model(a.arch, num_classes=1000), F.cross_entropy,
                                     [(_x(a.bs, a), ys(a.bs, 1000)) for _ in range(3)], a.warmup, a.steps, a.bs, dt))
    jobs['arcface_nchw'] = lambda: plain_loop(arc(), ArcFaceLoss(), [(_x(a.bs, a, cl=False), ys(a.bs, n_cls)) for _ in range(3)], a.warmup,
                                              a.steps, a.bs, dt, channels_last=False)
    if dt == torch.bfloat16:   # what a T4 must use: fp16 with loss scaling (GradScaler.step syncs once a step)
        jobs['arcface_fp16_scaler'] = lambda: plain_loop(arc(), ArcFaceLoss(), [(_x(a.bs, a), ys(a.bs, n_cls)) for _ in range(3)],
                                                         a.warmup, a.steps, a.bs, torch.float16)
    return jobs

def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='CPU smoke size: 32×64, batch 8, 5 timed steps')
    ap.add_argument('--arch', default='efficientnet_b0')
    ap.add_argument('--size', type=int, nargs=2, default=None, help='H W (default 256 512; quick 64 128)')
    ap.add_argument('--bs', type=int, default=None, help='batch (Siamese: pairs, so 2·bs photos)')
    ap.add_argument('--steps', type=int, default=None); ap.add_argument('--warmup', type=int, default=None)
    ap.add_argument('--workers', type=int, default=None, help='loader worker processes (default 4 on GPU, 0 on CPU)')
    ap.add_argument('--n-ids', type=int, default=None, help='ArcFace classes, padded with unseen ids (default 5004 as in the competition; quick 500)')
    ap.add_argument('--n-feats', type=int, default=512)
    ap.add_argument('--data', help='competition dir (default: a synthetic one)')
    ap.add_argument('--whales', type=int, default=60, help='whales of the synthetic competition')
    ap.add_argument('--learners', default='arcface,siamese')
    ap.add_argument('--variants', default=None, help='comma list of ArcFace variants (default: all but compile)')
    ap.add_argument('--compile', action='store_true', help='also time torch.compile of the tuned ArcFace learner')
    ap.add_argument('--deadline', type=float, default=None, help='skip variants once this many seconds have passed')
    ap.add_argument('--rounds', type=int, default=1, help='repeat every timing, interleaved, keeping the best (use 3 on a shared CPU)')
    ap.add_argument('--out', default=None)
    a = ap.parse_args(argv)
    q = a.quick
    a.size = tuple(a.size or ((32, 64) if q else (256, 512)))
    a.bs = a.bs or (8 if q else 64)
    a.n_ids = a.n_ids or (500 if q else 5004)
    a.steps = a.steps or (5 if q else 30)
    a.warmup = a.warmup or (2 if q else 8)
    if a.workers is None: a.workers = min(4, os.cpu_count()) if cuda() else 0
    return a

def main(argv=None):
    a = parse(argv); t_start = time.perf_counter(); cpu_threads()
    torch.backends.cudnn.benchmark = True     # fixed shapes: let cuDNN pick its kernels (learners and ceiling alike)
    from whale_kernel.core import seed_everything
    from whale_kernel.data import NEW_WHALE
    seed_everything(0)
    data = synth_data(a.data, n_whales=a.whales) if a.data is None else a.data
    imgs, ids, dec_s = train_cache(data, a.size)
    imgs = np.asarray(imgs)
    known = np.flatnonzero(ids != NEW_WHALE)
    vocab = sorted(set(ids[known])); vocab += [f'unseen_{i}' for i in range(max(0, a.n_ids - len(vocab)))]
    n_rows = (a.warmup + a.steps + 3) * a.bs
    rng = np.random.default_rng(0)
    rows = rng.permutation(np.resize(known, n_rows))
    res = meta(config=dict(arch=a.arch, size=list(a.size), bs=a.bs, steps=a.steps, warmup=a.warmup, workers=a.workers,
                           rounds=a.rounds, n_ids=len(vocab), photos=len(imgs), data=str(data), weights='random init',
                           amp=str(amp_dtype()).replace('torch.', '') if cuda() else 'fp32 (CPU)', cudnn_benchmark=True,
                           decode_s=round(dec_s, 2), decode_img_s=round(len(imgs)/dec_s, 1) if dec_s > 0.05 else None))
    learners = a.learners.split(',')
    jobs = {('ceiling', k):f for k,f in ceiling_jobs(a, 2*len(vocab)).items() if k != 'siamese' or 'siamese' in learners}
    if 'arcface' in learners:
        names = a.variants.split(',') if a.variants else [k for k in ARC_VARIANTS if k != 'compile'] + (['compile'] if a.compile else [])
        names = [n for n in names if n not in (('cpu_cl',) if cuda() else ('fp32', 'no_cudnn_bench'))]   # GPU-only, CPU-only knobs
        for n in names:
            jobs['arcface', n] = partial(lambda v: _cudnn(v, lambda: time_learner(arcface_learner_v(imgs, ids, rows, vocab, a, v),
                                                                                   a.warmup, a.steps, a.bs)), ARC_VARIANTS[n])
    if 'siamese' in learners:
        from whale_kernel.lap import PairMiner
        pairs = PairMiner(ids, seed=0).epoch_pairs(k=100., record=False)
        pairs = pairs[rng.permutation(np.resize(np.arange(len(pairs)), n_rows))]
        for n,v in SIA_VARIANTS.items():
            jobs['siamese', n] = partial(lambda v: time_learner(siamese_learner_v(imgs, pairs, a, v), a.warmup, a.steps, 2*a.bs), v)
    def prio(k):   # the headline first: ceilings, then the cumulative variants; ablations last (a deadline cuts those)
        if k[0] == 'ceiling': return 0 if k[1] in ('arcface', 'siamese') else 2
        return 1 if k[1] in ('default', 'no_bar', 'adamw', 'tuned') else 2
    jobs = dict(sorted(jobs.items(), key=lambda kv: prio(kv[0])))
    best = {}
    for r in range(a.rounds):   # rounds interleave everything, so a busy spell on a shared box hurts all alike; best kept
        for k,f in jobs.items():
            if a.deadline is not None and time.perf_counter() - t_start > a.deadline:
                best.setdefault(k, dict(skipped='deadline')); continue
            if k[1] == 'compile' and r: continue                     # compiling twice only measures the compile cache
            try: s = f()
            except Exception as e:
                best.setdefault(k, dict(error=repr(e)[:300])); print(f'{k}: failed {e!r}', flush=True); continue
            finally: free()
            if s > best.get(k, {}).get('img_s', 0): best[k] = dict(img_s=s)
            print(f'round {r} {k[0]:8s} {k[1]:20s} {s:9.1f} img/s', flush=True)
            _fill(res, best); write('train_throughput', res, a.out)
    res['wall_s'] = time.perf_counter() - t_start
    _fill(res, best); p = write('train_throughput', res, a.out)
    print(f'wrote {p} in {res["wall_s"]:.0f}s')
    return res

def _fill(res, best):
    "Result keys from the `best` img/s per (group, name); per learner `learner_img_s`/`ratio` as shipped, `tuned_*`, best variant"
    res['ceiling_img_s'] = {k[1]:v.get('img_s') for k,v in best.items() if k[0] == 'ceiling'}
    for g in ('arcface', 'siamese'):
        vs = {k[1]:dict(v) for k,v in best.items() if k[0] == g}
        if not vs: continue
        c = res['ceiling_img_s'].get(g)
        for v in vs.values():
            if 'img_s' in v and c: v['ratio'] = v['img_s'] / c
        r = res[g] = dict(ceiling_img_s=c, variants=vs)
        ok = {n:v for n,v in vs.items() if 'ratio' in v}
        if 'default' in ok: r.update(learner_img_s=ok['default']['img_s'], ratio=ok['default']['ratio'])
        if 'tuned' in ok: r.update(tuned_img_s=ok['tuned']['img_s'], tuned_ratio=ok['tuned']['ratio'])
        if ok:
            b = max(ok, key=lambda n: ok[n]['img_s']); r.update(best_variant=b, best_ratio=ok[b]['ratio'])
    return res

if __name__ == '__main__': main()
