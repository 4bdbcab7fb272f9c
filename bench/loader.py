"""Loader throughput (images/s): JPEG decode + resize by `cache_images` (draft-mode `load_image`, thread pool) at 1 and
W workers, and batches from the pre-resized cache through the project's fastai loader (`array_dls`) at 0 and W workers.

    python bench/loader.py [--quick] [--size 256 512] [--workers 4] [--n 600] [--data DIR]

`W` is 4 (Kaggle's core count) or what the CPU has. Photos are synthetic flukes (`make_synth`) resized to the real
competition's typical 1050×700 (`--photo`), JPEG quality 90, cropped to their boxes, repeated to `--n` rows. Cache batches are timed two ways: `raw` (the loader's uint8 batches, moved to the GPU when there is one)
and `tfms` (plus the project's batch transforms: to float, augment, normalise, on the GPU when there is one).
`epoch_start_s`: wait for the first batch of a second epoch, with and without persistent workers.
Writes bench/results/loader.json.
"""
import argparse, os, time
import numpy as np, pandas as pd, torch
from PIL import Image
from pathlib import Path
from _util import meta, write, cuda, cpu_threads, sync, synth_data, TMP

def photo_sized(df, wh=(1050, 700), out=None, quality:int=90) -> pd.DataFrame:
    "Copies of the photos of `df` resized to `wh` (W,H), like the real competition's, with their boxes scaled"
    out = Path(out or TMP/f'photos_{wh[0]}x{wh[1]}'); out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in df.drop_duplicates('fn').itertuples():
        fn = out/Path(r.fn).name
        with Image.open(r.fn) as im:
            sx,sy = wh[0]/im.size[0], wh[1]/im.size[1]
            if not fn.exists(): im.convert('RGB').resize(wh, Image.BICUBIC).save(fn, quality=quality)
        rows.append(dict(fn=str(fn), x0=r.x0*sx, y0=r.y0*sy, x1=r.x1*sx, y1=r.y1*sy))
    return pd.DataFrame(rows)

def jpeg_rate(df, size, workers:int) -> float:
    "Images/s of `cache_images` (draft-mode decode, crop, resize) over `df`, no cache file"
    from whale_kernel.data import cache_images
    t = time.perf_counter(); cache_images(df, size, None, workers=workers); return len(df) / (time.perf_counter() - t)

def full_decode_rate(fns, size) -> float:
    "Images/s of a plain full-size PIL decode + resize, one thread (what draft mode saves)"
    h,w = size; t = time.perf_counter()
    for f in fns:
        with Image.open(f) as im: im.convert('RGB').resize((w, h), Image.BILINEAR)
    return len(fns) / (time.perf_counter() - t)

def cache_rate(imgs, bs:int, workers:int, n_batches:int, tfms:bool=False, persistent:bool=False) -> dict:
    "Images/s of `array_dls` train batches over cached `imgs`; with `tfms` the project's batch transforms run too"
    from fasttransform import Pipeline
    from whale_kernel.data import array_dls
    n = len(imgs); rows = np.resize(np.arange(n), (n_batches + 1) * bs)
    kw = dict(pin_memory=cuda(), persistent_workers=bool(persistent) and workers > 0)
    dev = torch.device('cuda' if cuda() else 'cpu')
    try: dls = array_dls(imgs, np.zeros(n, int), rows, None, bs=bs, aug=True, workers=workers, device=dev, **kw)
    except TypeError as e:        # an array_dls that sets pinned memory and persistent workers itself
        if 'multiple values' not in str(e): raise
        dls = array_dls(imgs, np.zeros(n, int), rows, None, bs=bs, aug=True, workers=workers, device=dev)
        for d in dls.loaders: d.fake_l.persistent_workers = kw['persistent_workers']
    dl = dls.train
    if not tfms: dl.after_batch = Pipeline([])
    res = {}
    for ep in range(2 if persistent is not None and workers else 1):
        t0 = time.perf_counter(); it = iter(dl); next(it); sync(); first = time.perf_counter() - t0
        t = time.perf_counter(); k = 0
        for b in it: k += 1
        sync(); res[f'epoch{ep}'] = dict(first_batch_s=first, img_s=k * bs / (time.perf_counter() - t))
    return dict(img_s=max(v['img_s'] for v in res.values()), epoch_start_s=res[f'epoch{len(res)-1}']['first_batch_s'])

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--data')
    ap.add_argument('--size', type=int, nargs=2, default=None); ap.add_argument('--bs', type=int, default=None)
    ap.add_argument('--workers', type=int, nargs='*', default=None, help='worker counts to time (default: 4 or the CPU count, and all cores)')
    ap.add_argument('--n', type=int, default=None, help='photos (rows) decoded per timing')
    ap.add_argument('--photo', type=int, nargs=2, default=[1050, 700], help='resize the synthetic photos to W H first (0 0: as made)')
    ap.add_argument('--whales', type=int, default=60); ap.add_argument('--out')
    a = ap.parse_args(argv); cpu_threads()
    size = tuple(a.size or ((128, 256) if a.quick else (256, 512)))
    bs, n = a.bs or (16 if a.quick else 64), a.n or (64 if a.quick else 1024)
    cpus = os.cpu_count()
    ws = sorted(set(a.workers or [min(4, cpus), cpus]))
    data = synth_data(a.data, n_whales=a.whales) if a.data is None else a.data
    from whale_kernel.data import read_competition, cache_images
    df = read_competition(data).train
    if a.photo[0]: df = photo_sized(df, tuple(a.photo))
    df = df.iloc[np.resize(np.arange(len(df)), n)].reset_index(drop=True)
    res = meta(config=dict(size=list(size), bs=bs, photos=n, data=str(data), photo_wh=a.photo if a.photo[0] else 'as made', boxes=True, workers=ws))
    jpeg_rate(df.iloc[:min(16, n)], size, 1)                                  # warm the page cache and imports
    res['full_decode_1_img_s'] = full_decode_rate(list(df.fn[:min(n, 200)]), size)
    res['jpeg_img_s'] = {str(w): jpeg_rate(df, size, w) for w in [1] + ws}
    print('jpeg (draft mode, cache_images):', {k: round(v, 1) for k,v in res['jpeg_img_s'].items()}, flush=True)
    write('loader', res, a.out)
    imgs, _ = cache_images(df.iloc[:min(n, 512)], size, None, workers=cpus)
    nb = max(4, min(40, 4 * len(imgs) // bs))
    res['cache_img_s'], res['cache_tfms_img_s'], res['epoch_start_s'] = {}, {}, {}
    for w in [0] + ws:
        r = cache_rate(imgs, bs, w, nb, persistent=False)
        res['cache_img_s'][str(w)] = r['img_s']; res['epoch_start_s'][f'{w}'] = r['epoch_start_s']
        if w:
            rp = cache_rate(imgs, bs, w, nb, persistent=True); res['epoch_start_s'][f'{w}_persistent'] = rp['epoch_start_s']
        res['cache_tfms_img_s'][str(w)] = cache_rate(imgs, bs, w, nb, tfms=True, persistent=None)['img_s']
        print(f'cache, {w} workers: raw {res["cache_img_s"][str(w)]:.0f} img/s, with batch tfms {res["cache_tfms_img_s"][str(w)]:.0f} img/s',
              flush=True)
        write('loader', res, a.out)
    k = str(min(4, cpus))
    res.update(jpeg_4_img_s=res['jpeg_img_s'].get(k), cache_4_img_s=res['cache_img_s'].get(k), workers_for_4=int(k))
    p = write('loader', res, a.out); print(f'wrote {p}')
    return res

if __name__ == '__main__': main()
