"""Shared helpers of the bench/ scripts: machine and versions, result JSONs, synthetic photos, timing."""
import dataclasses, datetime, json, math, os, platform, sys, time
from pathlib import Path
import numpy as np, torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.append(str(ROOT))   # a plain clone, not installed
RES = Path(__file__).resolve().parent/'results'
TMP = Path(os.environ.get('BENCH_TMP', '/tmp/whale_bench'))

def cuda() -> bool: return torch.cuda.is_available()

def cpu_threads(n:int|None=None):
    "On a CPU, `n` torch threads (default 1: OpenMP spin-waits make 2 threads far slower on a busy shared box)"
    if not cuda(): torch.set_num_threads(n or int(os.environ.get('BENCH_THREADS', 1)))

def device_name() -> str:
    "The GPU's name, or 'cpu: N-core <model>'"
    if cuda(): return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try: model = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    return f'cpu: {os.cpu_count()}-core {model}'

def versions() -> dict:
    "Versions of what the timings depend on"
    import timm, fastai
    v = dict(torch=torch.__version__, timm=timm.__version__, fastai=fastai.__version__, python=platform.python_version(),
             numpy=np.__version__)
    if cuda(): v.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try: import triton; v['triton'] = triton.__version__
    except ImportError: pass
    return v

def meta(**kw) -> dict:
    "`device`, `date`, `versions` and `cpus`, then `kw`"
    return dict(device=device_name(), date=datetime.datetime.now().isoformat(timespec='seconds'), versions=versions(),
                cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), loadavg=round(os.getloadavg()[0], 2), **kw)

def out_path(name, out=None) -> Path:
    "Where result `name` goes: `out` (a dir or .json), else `$BENCH_OUT`, else bench/results/`name`.json"
    out = out or os.environ.get('BENCH_OUT')
    if out is None: p = RES/f'{name}.json'
    else: p = Path(out); p = p if p.suffix == '.json' else p/f'{name}.json'
    p.parent.mkdir(parents=True, exist_ok=True)
    return p

def write(name, res:dict, out=None) -> Path:
    "Write `res` as JSON (atomically: a later failure never leaves half a file)"
    p = out_path(name, out); tmp = p.with_suffix('.tmp')
    tmp.write_text(json.dumps(res, indent=1, default=_plain)); os.replace(tmp, p)
    return p

def _plain(o):
    if isinstance(o, (np.generic,)): return o.item()
    if isinstance(o, (np.ndarray, torch.Tensor)): return o.tolist()
    if isinstance(o, Path): return str(o)
    return repr(o)

def sync():
    if cuda(): torch.cuda.synchronize()

class Timer:
    "Wall seconds of a `with` block, CUDA-synchronised at both ends"
    def __enter__(self): sync(); self.t = time.perf_counter(); return self
    def __exit__(self, *a): sync(); self.s = time.perf_counter() - self.t

def synth_data(path=None, n_whales:int=60, seed:int=0, workers:int|None=None, **kwargs) -> Path:
    "A synthetic competition (`make_synth`) at `path`, reused when already there"
    from whale_kernel.synth import make_synth
    path = Path(path or TMP/f'synth_{n_whales}_{seed}')
    if (path/'solution.csv').exists() and (path/'train.csv').exists(): return path
    return make_synth(path, n_whales=n_whales, seed=seed, n_workers=workers or os.cpu_count(), overwrite=True, **kwargs)

def train_cache(data, size, workers:int|None=None, cache_dir=None):
    "Decoded train photos (uint8 N,H,W,3, memory-mapped cache), their ids and the seconds the decode took (0 if cached)"
    from whale_kernel.data import read_competition, cache_images
    df = read_competition(data).train
    t = time.perf_counter()
    imgs, ok = cache_images(df, tuple(size), cache_dir or Path(data)/'cache', workers=workers or os.cpu_count(), name='train')
    return imgs, df.Id.values, time.perf_counter() - t

def no_bar():
    "Drop fastai's progress bar from the default callbacks (it calls `.item()` each batch, a CUDA sync)"
    import fastai.learner as FL
    from fastai.callback.progress import ProgressCallback
    FL.defaults.callbacks = [c for c in FL.defaults.callbacks if c is not ProgressCallback]

def preset_size(p) -> tuple:
    "(H, W) of preset `p`: its `size`, or for 'auto' the flukes' 1:2 within its `pixels` (multiples of 16)"
    if isinstance(p.size, (tuple, list)): return tuple(p.size)
    h = max(16, int(round(math.sqrt(getattr(p, 'pixels', 256*512) / 2) / 16)) * 16)
    return (h, 2*h)

def siamese_size(p) -> tuple:
    "The Siamese photo size of preset `p` (its `siamese_size` where it has one)"
    s = getattr(p, 'siamese_size', None)
    return tuple(s) if s else preset_size(p)

def with_fields(p, **kw):
    "A copy of preset `p` with those of `kw` that are preset fields and not None"
    from whale_kernel.core import get_preset
    names = {f.name for f in dataclasses.fields(p)}
    return get_preset(p, **{k:v for k,v in kw.items() if k in names and v is not None})

def sets_arg(s:str) -> dict:
    "`--set K=V,K=V` as a dict of Python values (an argparse type)"
    import ast
    return {k: ast.literal_eval(v) for k, v in (o.split('=', 1) for o in s.split(','))}

def cli_argv(args:list, sets:dict|None=None) -> list:
    "The argv of `whale-kernel ARGS` with this Python, the `cpu` preset's fields `sets` overridden (the CLI has no flags for them)"
    code = ('import sys; from whale_kernel.core import PRESETS, get_preset; '
            + (f'PRESETS["cpu"] = get_preset("cpu", **{dict(sets)!r}); ' if sets else '')
            + 'from whale_kernel.cli import main; sys.exit(main(sys.argv[1:]))')
    return [sys.executable, '-c', code, *map(str, args)]
