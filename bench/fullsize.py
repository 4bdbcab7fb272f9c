"""A full-size synthetic competition, timed: as many synthetic photos as `make_synth` writes in `--gen-s` seconds on all
cores, then the per-epoch costs of the ArcFace and Siamese learners at the preset's size on them, inference, LAP and
decode, projected to the real competition's size (25,361 train, 7,960 test) and to Kaggle's T4×2.

    python bench/fullsize.py [--quick] [--gen-s 60] [--preset kaggle] [--t4-ratio 0.1] [--ddp-scale 1.7]

Learner throughput is timed over a few steps on `--n-time` of the photos (decoded once by `cache_images`), with the
variants of `train_throughput.py` (`default` as shipped, `tuned`), random init. Epochs: ArcFace rows per epoch are
`oversample(known train rows, min_per_id)`, Siamese photos per epoch 4·anchors (one positive and one negative pair per
anchor), both scaled from the synthetic set to 25,361 train photos. The projection multiplies GPU seconds by
1 / (`--t4-ratio` · `--ddp-scale`): the ratio of a T4's to this card's train throughput is an assumption (T4 fp16 tensor
cores: 65 TFLOPS and 320 GB/s against an H100's ~990 dense bf16 TFLOPS and 3.35 TB/s; convnets at this size are mostly
bandwidth-bound, so 0.1 for an H100, 0.07 for an H200), and 1.7 is the issue's target for two T4s in DDP. CPU work
(LAP, decode) is taken as measured here, decode scaled to Kaggle's 4 cores. Writes bench/results/fullsize.json.
"""
import argparse, math, os, time
from pathlib import Path
import numpy as np, torch
from _util import meta, write, cuda, cpu_threads, Timer, TMP, device_name, preset_size, siamese_size

FULL_TRAIN, FULL_TEST = 25361, 7960

def generate(out, seconds:float, workers:int, seed:int=7, cap:int=5004) -> dict:
    "A synthetic competition in `out` sized to take about `seconds` on `workers` processes (calibrated on a small one)"
    from whale_kernel.synth import make_synth, synth_summary
    t0 = time.perf_counter()
    cal = make_synth(Path(out).parent/f'{Path(out).name}_cal', n_whales=max(8, 2*workers), seed=seed+1, n_workers=workers, overwrite=True)
    s = synth_summary(cal); t_cal = time.perf_counter() - t0
    per_whale = (s['train'] + s['test']) / max(8, 2*workers); rate = (s['train'] + s['test']) / t_cal
    left = max(5., seconds - t_cal)
    n_whales = int(np.clip(left * rate / per_whale / 1.1, 8, cap))     # 10% margin: bigger plans have longer tails
    t = time.perf_counter()
    make_synth(out, n_whales=n_whales, seed=seed, n_workers=workers, overwrite=True)
    s = synth_summary(out); secs = time.perf_counter() - t
    return dict(n_whales=n_whales, train=s['train'], test=s['test'], gen_s=secs, cal_s=t_cal, img_s=(s['train'] + s['test']) / secs,
                workers=workers)

def infer_rate(fn, imgs, size, bs:int) -> float:
    "Images/s of `fn` (a model's embedding) over uint8 `imgs` resized to `size`, autocast on CUDA"
    import torch.nn.functional as F
    from whale_kernel.data import img_batches
    dev = torch.device('cuda' if cuda() else 'cpu')
    dt = torch.bfloat16 if cuda() and torch.cuda.is_bf16_supported() else torch.float16
    def run(x):
        n = 0
        with torch.no_grad(), torch.autocast(dev.type, dtype=dt, enabled=cuda()):
            for b in img_batches(x, bs=bs, device=dev):
                if tuple(b.shape[-2:]) != tuple(size): b = F.interpolate(b, size=tuple(size), mode='bilinear', antialias=True)
                fn(b.contiguous(memory_format=torch.channels_last)); n += len(b)
        return n
    run(imgs[:bs])
    with Timer() as t: n = run(imgs)
    return n / t.s

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--preset', default='kaggle')
    ap.add_argument('--gen-s', type=float, default=None, help='seconds of photo generation (default 60; quick 8)')
    ap.add_argument('--data', help='an existing competition dir instead of generating one')
    ap.add_argument('--n-time', type=int, default=None, help='photos decoded and used for the timings (default 1536; quick 64)')
    ap.add_argument('--arch'); ap.add_argument('--bs', type=int); ap.add_argument('--size', type=int, nargs=2)
    ap.add_argument('--siamese-size', type=int, nargs=2)
    ap.add_argument('--steps', type=int); ap.add_argument('--warmup', type=int); ap.add_argument('--workers', type=int)
    ap.add_argument('--variants', default='default,tuned')
    ap.add_argument('--t4-ratio', type=float, default=None, help="a T4's train throughput over this card's (default 0.1 H100, 0.07 H200)")
    ap.add_argument('--ddp-scale', type=float, default=1.7, help='speed-up of two T4s in DDP over one')
    ap.add_argument('--out')
    a = ap.parse_args(argv); cpu_threads()
    torch.backends.cudnn.benchmark = True
    import train_throughput as T, lap_epoch as LE
    from whale_kernel.core import get_preset
    from whale_kernel.data import read_competition, cache_images, valid_split, NEW_WHALE
    from whale_kernel.lap import PairMiner
    t_start = time.perf_counter(); cores = os.cpu_count()
    p = get_preset(a.preset)
    size = tuple(a.size or preset_size(p))
    if a.quick: size = tuple(a.size or (32, 64))
    ssz = tuple(a.siamese_size or (siamese_size(p) if getattr(p, 'siamese_size', None) else size))
    if a.quick and not a.siamese_size: ssz = (32, 32)
    arch, bs = a.arch or ('efficientnet_lite0' if a.quick else p.arch), a.bs or (8 if a.quick else p.bs)
    res = meta(preset=p.name, arch=arch, size=list(size), siamese_size=list(ssz), bs=bs, weights='random init')
    if a.data: data = Path(a.data); res['gen'] = None
    else:
        data = TMP/'fullsize'
        res['gen'] = generate(data, a.gen_s or (8 if a.quick else 60), cores)
        print('generated', res['gen'], flush=True)
    write('fullsize', res, a.out)
    comp = read_competition(data); train = comp.train
    ids = train.Id.values.astype(object)
    va = valid_split(train, seed=p.seed)
    tr = np.flatnonzero(~va); known_tr = tr[ids[tr] != NEW_WHALE]
    from whale_kernel.arcface import oversample
    arc_rows = len(oversample(known_tr, ids, p.min_per_id)); pm = PairMiner(ids, tr, seed=0)
    scale = FULL_TRAIN / len(train)
    res['counts'] = dict(train=len(train), test=len(comp.test), known=int((ids != NEW_WHALE).sum()), ids=len(set(ids) - {NEW_WHALE}),
                         arcface_rows=arc_rows, siamese_anchors=pm.n, siamese_candidates=pm.m, scale_to_full=scale)
    # decode: the timing subset at the preset's size, all cores (threads), no cache file
    n_time = min(len(train), a.n_time or (64 if a.quick else 1536))
    with Timer() as t: imgs, _ = cache_images(train.iloc[:n_time], size, None, workers=cores)
    res['decode'] = dict(photos=n_time, img_s=n_time / t.s, workers=cores, per_core_img_s=n_time / t.s / cores)
    print(f'decode {n_time} photos at {size}: {n_time / t.s:.0f} img/s on {cores} threads', flush=True)
    write('fullsize', res, a.out)
    # learners: the train_throughput harness on these photos
    ta = T.parse(['--arch', arch, '--bs', str(bs), '--n-feats', str(getattr(p, 'siamese_feats', 512))] + (['--quick'] if a.quick else [])
                 + [o for k,v in dict(steps=a.steps, warmup=a.warmup, workers=a.workers).items() if v is not None for o in (f'--{k}', str(v))])
    ta.size, ta.resize = size, ssz
    sub_ids = ids[:n_time]; known = np.flatnonzero(sub_ids != NEW_WHALE)
    vocab = sorted(set(sub_ids[known])); vocab += [f'unseen_{i}' for i in range(max(0, 5004 - len(vocab)))]
    rng = np.random.default_rng(0); n_rows = (ta.warmup + ta.steps + 3) * bs
    rows = rng.permutation(np.resize(known, n_rows))
    pairs = PairMiner(sub_ids, seed=0).epoch_pairs(k=100., record=False)
    pairs = pairs[rng.permutation(np.resize(np.arange(len(pairs)), n_rows))]
    res['train_img_s'] = {'arcface': {}, 'siamese': {}}
    arc_model = sia_model = None
    for n in a.variants.split(','):
        try:
            learn = T.arcface_learner_v(imgs, sub_ids, rows, vocab, ta, T.ARC_VARIANTS[n])
            res['train_img_s']['arcface'][n] = T.time_learner(learn, ta.warmup, ta.steps, bs); arc_model = learn.model
            print(f'arcface {n}: {res["train_img_s"]["arcface"][n]:.1f} img/s', flush=True)
        except Exception as e: res['train_img_s']['arcface'][n] = repr(e)[:300]; print('arcface failed', repr(e), flush=True)
        try:
            learn = T.siamese_learner_v(imgs, pairs, ta, T.SIA_VARIANTS[n])
            res['train_img_s']['siamese'][n] = T.time_learner(learn, ta.warmup, ta.steps, 2 * bs); sia_model = learn.model
            print(f'siamese {n}: {res["train_img_s"]["siamese"][n]:.1f} img/s', flush=True)
        except Exception as e: res['train_img_s']['siamese'][n] = repr(e)[:300]; print('siamese failed', repr(e), flush=True)
        write('fullsize', res, a.out)
    # inference (one view; TTA doubles it)
    res['infer_img_s'] = {}
    if arc_model is not None: res['infer_img_s']['arcface'] = infer_rate(arc_model.eval().embed, imgs, size, 2 * bs)
    if sia_model is not None: res['infer_img_s']['siamese'] = infer_rate(sia_model.eval().branch, imgs, ssz, 2 * bs)
    # LAP with the fit's settings on these ids, at full size when the set is near it
    ids_full = LE.competition_ids() if scale > 1.3 else ids[tr]
    res['lap'] = LE.time_lap(ids_full, max(1, p.lap_blocks), d=getattr(p, 'siamese_feats', 512) if cuda() else 32, rank=32 if cuda() else 16)
    print(f'LAP: {res["lap"]["lap_s"]:.1f} s', flush=True)
    res['projection'] = project(res, p, a)
    res['wall_s'] = time.perf_counter() - t_start
    pth = write('fullsize', res, a.out); print(f'wrote {pth}')
    return res

def _rate(d, prefer=('tuned', 'default')):
    ok = {k:v for k,v in d.items() if isinstance(v, float)}
    return next((ok[k] for k in prefer if k in ok), None)

def project(res, p, a) -> dict:
    "Hours of a full-size run here and on Kaggle's T4×2, from the measured rates, for the preset's epochs"
    from whale_kernel.core import get_preset
    c = res['counts']; s = c['scale_to_full']
    dev = device_name()
    r = a.t4_ratio or (0.07 if 'H200' in dev else 0.1)
    t4 = 1 / (r * a.ddp_scale) if cuda() else None
    def epochs(kind, knob=None):       # the fine-tune's epochs: ArcFace's frozen neck stage runs on cached features, seconds
        knob = knob or kind; e = getattr(p, f'{knob}_epochs'); steps = getattr(p, f'{knob}_steps', None)
        if isinstance(e, (tuple, list)):
            per = max(1, int((c['arcface_rows'] if kind == 'arcface' else 2 * c['siamese_anchors']) * s) // p.bs)
            return int(np.clip(math.ceil(steps / per), *e)) if steps else int(e[1])
        return int(e)
    out = dict(assumed_t4_over_this_gpu=r, ddp_scale=a.ddp_scale, full_train=FULL_TRAIN, full_test=FULL_TEST)
    for variant in ('default', 'tuned'):
        arc, sia = res['train_img_s']['arcface'].get(variant), res['train_img_s']['siamese'].get(variant)
        if not isinstance(arc, float) or not isinstance(sia, float): continue
        ea, es = epochs('arcface', 'arcface_ft' if hasattr(p, 'arcface_ft_epochs') else 'arcface') + getattr(p, 'arcface_freeze_epochs', 0), epochs('siamese')
        arc_ep = c['arcface_rows'] * s / arc
        sia_ep = 4 * c['siamese_anchors'] * s / sia
        lap = res['lap']['lap_s']
        refresh = c['siamese_candidates'] * s / res['infer_img_s'].get('siamese', float('inf')) / p.lap_every
        inf = sum(2 * (FULL_TRAIN + FULL_TEST) / v for v in res['infer_img_s'].values())
        gpu_h = (ea * arc_ep + es * (sia_ep + refresh) + inf) / 3600
        cpu_h = (es * lap + (FULL_TRAIN + FULL_TEST) / (res['decode']['per_core_img_s'] * 4)) / 3600
        v = dict(arcface_epochs=ea, siamese_epochs=es, arcface_epoch_s=arc_ep, siamese_epoch_s=sia_ep, lap_s_per_epoch=lap,
                 refresh_s_per_epoch=refresh, inference_s=inf, here_h=gpu_h + cpu_h)
        if t4:
            v['t4x2_h'] = gpu_h * t4 + cpu_h
            v['t4x2_arcface_epoch_s'], v['t4x2_siamese_epoch_s'] = arc_ep * t4, sia_ep * t4
            v['fits_12h'] = v['t4x2_h'] <= 11.
        out[variant] = v
    return out

if __name__ == '__main__': main()
