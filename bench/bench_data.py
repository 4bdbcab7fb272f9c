"""Decode throughput: full JPEG decode+resize vs PIL draft mode (`load_image`) vs reading the pre-resized cache.
Single thread (per core). Writes bench/results/data.md.
    python bench/bench_data.py [--data COMPETITION_DIR] [--n 200] [--size 128 256]
Without --data it writes --n photo-sized (1050x700) JPEGs of smooth random texture to a temp dir."""
import argparse, platform, tempfile, time, os
from pathlib import Path
import numpy as np, torch
from PIL import Image
from whale_kernel.data import load_image, cache_images, read_competition
import pandas as pd

def photos(n, d):
    rng = np.random.default_rng(0); fns = []
    for i in range(n):
        small = rng.integers(0, 255, (70, 105, 3)).astype(np.uint8)
        im = Image.fromarray(small).resize((1050, 700), Image.BICUBIC)
        fn = d/f'{i:05d}.jpg'; im.save(fn, quality=90); fns.append(str(fn))
    return fns

def rate(f, items):
    t = time.perf_counter()
    for o in items: f(o)
    return len(items)/(time.perf_counter()-t)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('--data'); ap.add_argument('--n', type=int, default=200)
    ap.add_argument('--size', type=int, nargs=2, default=[128, 256]); a = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    if a.data:
        df = read_competition(a.data).train.iloc[:a.n]; src = f'{a.data} (first {len(df)} train photos)'
    else:
        df = pd.DataFrame({'fn': photos(a.n, tmp)}).assign(x0=np.nan, y0=np.nan, x1=np.nan, y1=np.nan); src = f'{a.n} synthetic 1050x700 JPEGs'
    fns, (h, w) = list(df.fn), a.size
    full = rate(lambda f: Image.open(f).convert('RGB').resize((w, h), Image.BILINEAR), fns)
    draft = rate(lambda f: load_image(f, size=(h, w)), fns)
    arr, _ = cache_images(df, (h, w), cache_dir=tmp/'cache', workers=1)
    arr, _ = cache_images(df, (h, w), cache_dir=tmp/'cache', workers=1)        # memory-mapped read
    cache = rate(lambda i: torch.from_numpy(np.ascontiguousarray(arr[i])).permute(2, 0, 1).float(), range(len(arr)))
    out = Path(__file__).parent/'results'/'data.md'; out.parent.mkdir(exist_ok=True)
    out.write_text(f"""# Decode throughput (images/s, one thread)

machine: {os.cpu_count()}-core CPU, no GPU ({platform.processor() or platform.machine()}); source: {src}; target {h}x{w}

| path | img/s | vs full decode |
|---|---|---|
| full decode + resize (PIL) | {full:.0f} | 1.0x |
| draft-mode decode + resize (`load_image`) | {draft:.0f} | {draft/full:.1f}x |
| pre-resized cache read (`cache_images`, memory-mapped) | {cache:.0f} | {cache/full:.0f}x |
""")
    print(out.read_text())
