"Shared toy data for the tests (like fastai's `test_utils`): tiny photo arrays, tiny competition dirs, tiny learners."
import os, shutil, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image
from whale_kernel.data import NEW_WHALE

def toy_whales(n_ids:int=6, per_id:int=3, n_new:int=3, size=(32,64), seed:int=0, noise:bool=False):
    """uint8 photos (N,H,W,3) and ids (N,) of `n_ids` whales with `per_id` photos each, then `n_new` new_whales.
    Each whale is a fixed smooth random pattern, re-lit and noised per photo (`noise`: every photo pure noise instead)."""
    rng = np.random.default_rng(seed); h,w = size
    ids = np.array([f'w{i}' for i in range(n_ids) for _ in range(per_id)] + [NEW_WHALE]*n_new, dtype=object)
    if noise: return rng.integers(0, 255, (len(ids), h, w, 3), dtype=np.uint8), ids
    def pat():
        g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
        return F.interpolate(torch.rand(1, 3, 3, 6, generator=g), size=tuple(size), mode='bilinear', align_corners=False)[0].numpy()
    def shot(p): return (np.clip(p*rng.uniform(.8, 1.2) + rng.normal(0, .05, p.shape), 0, 1)*255).astype(np.uint8).transpose(1, 2, 0)
    imgs = []
    for i in range(n_ids):
        p = pat(); imgs += [shot(p) for _ in range(per_id)]
    imgs += [shot(pat()) for _ in range(n_new)]
    return np.stack(imgs), ids

def tiny_preset(**kw):
    "The cpu preset shrunk for tests: a small random backbone (no weights), small heads, small batches"
    from whale_kernel.core import get_preset
    return get_preset('cpu', **{**dict(arch='resnet10t', siamese_arch=None, arcface_frozen_arch=None, weights=None, emb_dim=16, siamese_feats=8, bs=8, min_per_id=2,
                                       views=2, siamese_views=4, pixels=32*64, frozen_res=None), **kw})

def write_photos(folder, names, size=(24,48), seed=0):
    "Random-noise JPEGs `names` in `folder`"
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True); rng = np.random.default_rng(seed)
    for n in names: Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder/n)

def write_comp(path, train:dict, test=('te0.jpg','te1.jpg'), size=(24,48)):
    "A competition dir at `path`: `train` {image name: id} (photos written), `test` photo names; returns `path`"
    path = Path(path)
    write_photos(path/'train', list(train), size); write_photos(path/'test', list(test), size, seed=1)
    pd.DataFrame({'Image': list(train), 'Id': list(train.values())}).to_csv(path/'train.csv', index=False)
    return path

def tiny_comp(path, n_whales:int=12, seed:int=0) -> Path:
    "The synthetic competition (with `solution.csv`) of `n_whales` whales in `path`: about 50 photos, a few seconds"
    from whale_kernel.synth import make_synth
    return make_synth(path, n_whales=n_whales, seed=seed, n_workers=1)

def copy_comp(src, dst, shuffle_solution:bool=False, seed:int=0) -> Path:
    "A copy of competition `src` at `dst`, its `solution.csv` Id column shuffled when `shuffle_solution`"
    shutil.copytree(src, dst)
    if shuffle_solution:
        sol = pd.read_csv(dst/'solution.csv')
        ids = sol.Id.values.copy()
        while (ids == sol.Id.values).all(): ids = np.random.default_rng(seed).permutation(ids); seed += 1
        sol.assign(Id=ids).to_csv(dst/'solution.csv', index=False)
    return Path(dst)

def photo_names(data) -> list:
    "The test photo names of competition `data`"
    return sorted(p.name for p in (Path(data)/'test').iterdir())

class TinyNet(nn.Module):
    "A model with a `backbone` (two linear layers) and a head, the layout `backbone_splitter` expects"
    def __init__(self, d_in=4, d=8, n_out=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(d_in, d), nn.ReLU(), nn.Linear(d, d))
        self.head = nn.Linear(d, n_out)
    def forward(self, x): return self.head(self.backbone(x))

def tiny_learner(n:int=48, bs:int=8, seed:int=0, **kw):
    "A fastai `Learner` of a `TinyNet` on a separable 3-class toy problem: a few ms per epoch"
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from whale_kernel.train import backbone_splitter
    torch.manual_seed(seed)
    x = torch.randn(n, 4); y = x[:, :3].argmax(1)
    ds = list(zip(x, y))
    from fastai.callback.progress import ProgressCallback
    dls = DataLoaders(DataLoader(ds[:n*3//4], bs=bs, shuffle=True), DataLoader(ds[n*3//4:], bs=bs))
    learn = Learner(dls, TinyNet(), loss_func=nn.CrossEntropyLoss(), splitter=backbone_splitter, **kw)
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, ProgressCallback)]); learn.logger = lambda *a: None
    return learn

def state(model) -> dict:
    "A detached copy of `model`'s state dict"
    return {k: v.detach().clone() for k,v in model.state_dict().items()}

def same_state(a:dict, b:dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

# --- subprocesses --------------------------------------------------------------------------------------------------

def cli_with_preset(argv:list, **preset) -> list:
    "A command line running `whale-kernel` with `argv`, its `cpu` preset replaced by `get_preset('cpu', **preset)`"
    code = ('import sys; from whale_kernel.core import PRESETS, get_preset; '
            f'PRESETS["cpu"] = get_preset("cpu", **{preset!r}); '
            f'from whale_kernel.cli import main; sys.exit(main({[str(a) for a in argv]!r}))')
    return [sys.executable, '-c', code]

def quiet_env(**kw) -> dict:
    "The environment of a test subprocess: one torch thread, no bars"
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', **kw}

def wait_for(fn, proc, timeout:float=180., poll:float=0.02) -> bool:
    "Wait until file `fn` exists (True) or process `proc` ends or `timeout` seconds pass (False)"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if Path(fn).exists(): return True
        if proc.poll() is not None: return False
        time.sleep(poll)
    return False
