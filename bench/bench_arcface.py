"""ArcFace on a CPU budget. Three measurements, each writing bench/results/arcface_<mode>.md:
    python bench/bench_arcface.py speed [--threads 2]   # img/s of one train step by thaw mode (frozen/late/all) and of
                                                        # inference, NCHW vs channels_last (best of --reps, so that other
                                                        # processes on a shared box disturb it least)
    python bench/bench_arcface.py recipes [--data DIR]  # validation and test MAP@5 of kNN and of ArcFace recipes on the
                                                        # synthetic default (GPU: about 10 s a recipe on an H100)
    python bench/bench_arcface.py run [--data DIR] [--set arcface_epochs=6]
                                                        # wall time and MAP@5 of `pipeline.run` with knn and with arcface
Without --data the synthetic default (`make_synth(seed=42)`, what `whale-kernel run` makes) is written to a temp dir."""
import argparse, json, os, platform, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd, torch

RES = Path(__file__).parent/'results'

def machine():
    if torch.cuda.is_available(): return f'{torch.cuda.get_device_name()} GPU, {os.cpu_count()} CPU cores'
    return f'{os.cpu_count()}-core CPU, no GPU ({platform.processor() or platform.machine()})'

def synth(data):
    if data: return Path(data)
    from whale_kernel.synth import make_synth
    d = Path(tempfile.mkdtemp())/'synth'; make_synth(d, seed=42); return d

def speed(a):
    from whale_kernel.arcface import ArcFaceNet, ArcFaceLoss
    from whale_kernel.train import backbone_splitter as arcface_splitter
    from whale_kernel.backbone import create_backbone
    torch.set_num_threads(a.threads)
    bs, x, y = 32, torch.randn(32, 3, 128, 256), torch.randint(0, 440, (32,))
    nets = {}
    for cl in (False, True):
        m = ArcFaceNet(create_backbone('efficientnet_lite0'), n_classes=440)
        nets[cl] = (m.to(memory_format=torch.channels_last) if cl else m), arcface_splitter(m)
    lf, best = ArcFaceLoss(), {}
    for r in range(a.reps + 1):                       # interleaved, so a busy spell hurts both formats alike
        for mode,k in [('frozen',2), ('late',1), ('all',0), ('inference',None)]:
            for cl in (False, True):
                m, gs = nets[cl]
                if k is None:
                    m.eval(); t = time.perf_counter()
                    with torch.no_grad(): m.embed(x)
                else:
                    m.train()
                    for i,g in enumerate(gs):
                        for p in g: p.requires_grad_(i >= k)
                    t = time.perf_counter(); lf(m(x), y).backward()
                dt = time.perf_counter() - t
                if r: best[mode,cl] = max(best.get((mode,cl), 0), bs/dt)
    rows = '\n'.join(f'| {mode} | {best[mode,False]:.1f} | {best[mode,True]:.1f} | {best[mode,True]/best[mode,False]:.2f}× |'
                     for mode in ('frozen','late','all','inference'))
    txt = f"""# ArcFace step throughput (efficientnet_lite0 @ 128×256, batch {bs}, fp32)

{machine()}, {a.threads} thread(s), best of {a.reps}; load average before/after {a.load0} / {os.getloadavg()[0]:.2f}.
A train step is forward + ArcFace loss + backward; `frozen` trains the neck and head only, `late` also the
low-resolution half of the backbone (`learn.freeze_to(-2)`), `all` everything.

| step | NCHW img/s | channels_last img/s | speed-up |
|---|---|---|---|
{rows}
"""
    (RES/'arcface_speed.md').write_text(txt); print(txt)

RECIPES = [('knn', {}),                                          # preset overrides of the cpu preset
           ('arcface', dict(arcface_mode='frozen')),
           ('arcface', dict(arcface_mode='frozen', arcface_lr=3e-3)),
           ('arcface', dict(arcface_mode='frozen', dynamic_margin=False)),
           ('arcface', dict(arcface_mode='auto')),                # frozen, then a late-half fine-tune if validation gains
           ('arcface', dict(arcface_mode='finetune', arcface_unfreeze='late', arcface_ft_steps=200)),
           ('arcface', dict(arcface_mode='finetune', arcface_unfreeze='all', arcface_ft_steps=200))]

def recipes(a):
    from whale_kernel.core import get_preset
    from whale_kernel.data import NEW_WHALE, valid_split, read_competition, merge_duplicates, cache_images
    from whale_kernel.metrics import reduce_by_id
    from whale_kernel.metrics import best_threshold, predict_top5, map5
    from whale_kernel.pipeline import MODELS
    d = synth(a.data); comp = read_competition(d); train = merge_duplicates(comp.train)
    imgs,_ = cache_images(train, (128,256), workers=os.cpu_count()); timgs,_ = cache_images(comp.test, (128,256), workers=os.cpu_count())
    tids = list(pd.read_csv(d/'solution.csv').set_index('Image').loc[comp.test.Image, 'Id'])
    p = get_preset('cpu', mixed_precision=False)
    ids = train.Id.values; is_valid = valid_split(train, seed=p.seed); known = ids != NEW_WHALE
    tr, va = np.flatnonzero(~is_valid), np.flatnonzero(is_valid)
    gal, gtr, all_ids = np.flatnonzero(known), np.flatnonzero(known & ~is_valid), sorted(set(ids[known]))
    rows = []
    for name,kw in RECIPES:
        m = MODELS[name]; fit, feats, sim = m.fit, m.features, m.similarity; t = time.perf_counter()
        model = fit(imgs, ids, tr, valid_idx=va[known[va]], preset=p, **kw)
        secs = time.perf_counter() - t
        ft, fq = feats(model, imgs, tta=True), feats(model, timgs, tta=True)
        r = dict(model=name, recipe=', '.join(f'{k}={v}' for k,v in kw.items()) or '-', fit_s=round(secs,1))
        for red in ('max','mean'):
            sv,_ = reduce_by_id(sim(model, ft[va], ft[gtr]), ids[gtr], all_ids, red)
            st,_ = reduce_by_id(sim(model, fq, ft[gal]), ids[gal], all_ids, red)
            thr, mv = best_threshold(sv, all_ids, list(ids[va]))
            r[red] = (mv, map5(predict_top5(st, all_ids, thr), tids))
        rows.append(r); print(json.dumps(r), flush=True)
    body = '\n'.join(f"| {r['model']} | {r['recipe']} | {r['max'][0]:.3f} | {r['max'][1]:.3f} | {r['mean'][0]:.3f} | {r['mean'][1]:.3f} | {r['fit_s']} |"
                     for r in rows)
    txt = f"""# ArcFace recipes on the synthetic default

{machine()}; data {d} ({len(train)} train photos, {len(comp.test)} test); `cpu` preset (efficientnet_lite0 @ 128×256,
offline ImageNet weights), fp32. Validation = `valid_split(seed=42)` as in the pipeline; the new_whale threshold is
chosen on validation only, and test MAP@5 is scored against `solution.csv`. Defaults: lr 3e-3, s 30, m 0.5, emb 512,
min_per_id 4, flip classes on, GeM. One run per recipe: differences under about 0.03 are within seed noise.

| model | recipe | valid MAP@5 (max) | test MAP@5 (max) | valid (mean) | test (mean) | fit s |
|---|---|---|---|---|---|---|
{body}
"""
    (RES/'arcface_recipes.md').write_text(txt); print(txt)

def run_timed(a):
    from whale_kernel.pipeline import run
    d = synth(a.data); rows = []
    for models in (['knn'], ['arcface']):
        out = Path(tempfile.mkdtemp()); l0 = os.getloadavg()[0]; t = time.perf_counter()
        s = run(d, out, models=models, **a.overrides)
        rows.append((models[0], time.perf_counter()-t, s['valid'][models[0]], (s['test'] or {}).get(models[0]), l0, os.getloadavg()[0]))
    body = '\n'.join(f'| {m} | {w:.0f} | {v:.4f} | {t:.4f} | {l0:.1f} / {l1:.1f} |' for m,w,v,t,l0,l1 in rows)
    txt = f"""# `whale-kernel run` on the synthetic default, `cpu` preset

{machine()}; data {d}; preset overrides {a.overrides or 'none'}; each run from an empty out dir (photo cache
included, synthesis excluded).
The load average (other processes on a shared box) is given because it stretches wall time accordingly.

| models | wall s | validation MAP@5 | test MAP@5 | load avg before / after |
|---|---|---|---|---|
{body}
"""
    (RES/'arcface_run.md').write_text(txt); print(txt)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('mode', choices=['speed','recipes','run'])
    ap.add_argument('--data'); ap.add_argument('--threads', type=int, default=2); ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--set', nargs='*', default=[], help='preset overrides for `run`, e.g. arcface_epochs=6')
    a = ap.parse_args(); a.load0 = f'{os.getloadavg()[0]:.2f}'; RES.mkdir(exist_ok=True)
    a.overrides = {k:eval(v) for k,v in (o.split('=', 1) for o in a.set)}
    dict(speed=speed, recipes=recipes, run=run_timed)[a.mode](a)
