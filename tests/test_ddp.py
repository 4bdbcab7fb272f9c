"DDP (`whale_kernel.ddp`): a real two-process run on the CPU with gloo, through torchrun in a subprocess"
import json
from dataclasses import fields
from pathlib import Path
import shutil, time
import numpy as np, pandas as pd, pytest, torch, torch.nn as nn
from PIL import Image
from whale_kernel.ddp import launch_ddp, state_digest, ddp_parser, n_gpus

def _competition(path, n_whales=4, per_whale=3, n_new=2, hw=(40, 80)):
    "A tiny competition dir of random-noise JPEGs"
    path = Path(path); (path/'train').mkdir(parents=True); (path/'test').mkdir()
    rng = np.random.default_rng(0)
    ids = [f'w_{i}' for i in range(n_whales) for _ in range(per_whale)] + ['new_whale']*n_new
    names = [f'tr{i:03d}.jpg' for i in range(len(ids))]
    for fn in [path/'train'/n for n in names] + [path/'test'/'te0.jpg']:
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(fn)
    pd.DataFrame(dict(Image=names, Id=ids)).to_csv(path/'train.csv', index=False)
    return path

def _sets():
    "Preset overrides for one quick epoch of the whole ArcFace network (only those fields this version has)"
    from whale_kernel.core import Preset
    want = dict(arcface_mode='finetune', arcface_ft_epochs='[1,1]', arcface_freeze_epochs=0, bs=4, weights='null', workers=0)
    have = {f.name for f in fields(Preset)}
    return [f'{k}={v}' for k,v in want.items() if k in have]

def test_two_ranks_gloo(tmp_path):
    data = _competition(tmp_path/'comp')
    out = tmp_path/'out'
    lines = launch_ddp(2, ['--data', data, '--out', out, '--preset', 'cpu', '--size', 32, 64, '--no-valid', '--set', *_sets()],
                       backend='gloo', timeout=240, quiet=True, env={'CUDA_VISIBLE_DEVICES': ''})
    r = [json.loads((out/f'rank{i}.json').read_text()) for i in (0, 1)]
    assert [o['rank'] for o in r] == [0, 1] and all(o['world'] == 2 and o['backend'] == 'gloo' for o in r)
    assert all(o['seen'] > 0 and o['batches'] == r[0]['batches'] for o in r)     # both trained, in step
    assert r[0]['first_batch'] != r[1]['first_batch']                             # on different photos
    assert r[0]['digest_start'] == r[1]['digest_start']                           # from the same start
    assert r[0]['digest'] == r[1]['digest'] != r[0]['digest_start']               # to the same, trained, weights
    sd = torch.load(out/'arcface_weights.pth', weights_only=True)
    assert state_digest(sd) == r[0]['digest']                                     # which rank 0 saved
    assert not any(k.startswith('module.') for k in sd)
    assert sum('done in' in l for l in lines) == 2

def test_parser_and_gpus():
    a = ddp_parser().parse_args(['--out', 'o', '--imgs', 'x.npy', '--ids', 'i.txt', '--set', 'bs=8', 'arch=resnet18'])
    assert a.set == ['bs=8', 'arch=resnet18'] and a.preset == 'kaggle' and not a.features
    assert n_gpus() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)

TINY = dict(size=(32, 64), bs=4, weights=None, workers=0, views=2, emb_dim=16, arcface_steps=8, arcface_epochs=(2, 2),
            arcface_ft_steps=4, arcface_ft_epochs=(2, 2), siamese_arch=None, siamese_views=2, siamese_feats=16,
            siamese_steps=8, siamese_epochs=(2, 2), rerank=False, pseudo=False, max_splits=1)

def test_pipeline_trains_on_two_ranks(tmp_path):
    "`ddp=2`: the run trains ArcFace ('auto': frozen, then the thaw) and the Siamese on two gloo ranks, then only loads their checkpoints"
    from whale_kernel.pipeline import run
    from whale_kernel.ensemble import ModelScores
    data = _competition(tmp_path/'comp', n_whales=6, per_whale=3, n_new=3)
    out = tmp_path/'run'
    run(data=data, out=out, models=('arcface', 'siamese'), quiet=True, ddp=2, **TINY)
    for pre,name in [('', 'arcface'), ('siamese_', 'siamese')]:
        r = [json.loads((out/'models'/f'{pre}rank{i}.json').read_text()) for i in (0, 1)]
        assert all(o['world'] == 2 and o['backend'] == 'gloo' for o in r)
        assert r[0]['digest'] == r[1]['digest'] and r[0]['seen'] > 0 and r[0]['batches'] == r[1]['batches']   # trained distributed, in step
        assert r[0]['first_batch'] != r[1]['first_batch']
        ms = ModelScores.load(next((out/'scores').glob(f'{name}_*.npz')))
        assert ms.info['fit_log'] == []                                           # this process trained nothing: it loaded rank 0's
        assert len(ms.info['curve']) >= 2
    sub = pd.read_csv(out/'submission.csv'); assert list(sub.columns) == ['Image', 'Id'] and len(sub) == 1

def test_siamese_finetune_two_ranks_mine_alike(tmp_path):
    "The whole Siamese network on two ranks, LAP mining from the second epoch (no validation, so no selection puts step 0 back): both ranks end with the same, trained, weights"
    data = _competition(tmp_path/'comp', n_whales=6, per_whale=3, n_new=3)
    out = tmp_path/'out'
    sets = [f'{k}={json.dumps(v)}' for k,v in {**TINY, 'siamese_mode': 'finetune'}.items() if k != 'size']
    launch_ddp(2, ['--model', 'siamese', '--data', data, '--out', out, '--preset', 'cpu', '--size', 32, 64, '--no-valid', '--set', *sets],
               backend='gloo', timeout=240, quiet=True, env={'CUDA_VISIBLE_DEVICES': ''})
    r = [json.loads((out/f'siamese_rank{i}.json').read_text()) for i in (0, 1)]
    assert r[0]['digest'] == r[1]['digest'] != r[0]['digest_start'] and r[0]['seen'] > 0
    assert state_digest(torch.load(out/'siamese_weights.pth', weights_only=True)) == r[0]['digest']

def test_ddp_procs_and_a_bad_count():
    from whale_kernel.core import get_preset
    from whale_kernel.ddp import ddp_procs
    assert ddp_procs(get_preset('cpu', ddp=3)) == 3
    assert ddp_procs(get_preset('cpu')) == (n_gpus() if n_gpus() > 1 else 1)   # 0: every GPU when there are two or more
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match='Preset.ddp must be a process count'): get_preset('cpu', ddp=bad)

# --- the Kaggle path: timm's synced batch norms, a shared deadline, a run cut short (issue 24) ---------------------------

from whale_kernel.core import PRESETS
from whale_kernel.backbone import preset_archs
ARCHS = sorted({a for p in PRESETS.values() for a in preset_archs(p)})

@pytest.mark.parametrize('arch', ARCHS)
def test_sync_batchnorm_keeps_every_preset_backbone(arch):
    "Each backbone of each preset, converted for DDP, computes what it did (torch's own conversion drops the activation of timm's BatchNormAct2d)"
    from whale_kernel.backbone import create_backbone
    from whale_kernel.ddp import sync_batchnorm
    torch.manual_seed(0)
    m = create_backbone(arch, weights=None).eval()
    for b in m.modules():                                    # running statistics that are not the identity, as after training
        if isinstance(b, nn.BatchNorm2d): b.running_mean.uniform_(-.5, .5); b.running_var.uniform_(.5, 2)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad(): ref = m(x)
    types = [type(o) for o in m.modules()]
    s = sync_batchnorm(m).eval()
    assert any(isinstance(o, nn.SyncBatchNorm) for o in s.modules())
    with torch.no_grad(): assert torch.equal(s(x), ref) and torch.equal(m(x), ref)
    assert [type(o) for o in m.modules()] == types                                    # the model itself is not converted
    assert all(a is b for a,b in zip(m.parameters(), s.parameters()))                 # it shares what the copy trains
    assert all(a is b for a,b in zip(m.buffers(), s.buffers()))

RANKS = '''
import json, sys, time, torch, torch.nn as nn, torch.distributed as dist
from fastai.learner import Learner
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from whale_kernel.backbone import create_backbone
from whale_kernel.ddp import DDPTrainer, DDP, RankBudget, setup, teardown
rank, world = setup('gloo')
DDP._passing_sync_batchnorm_handle = lambda self, module: None   # torch's GPU-only check of SyncBatchNorm: CPU ranks here
torch.manual_seed(0)
m = create_backbone('efficientnet_lite0', weights=None).eval()
x = torch.randn(2, 3, 64, 96)
with torch.no_grad(): ref = m(x)
dl = DataLoader(list(range(4)), bs=2)
learn = Learner(DataLoaders(dl, dl), m, loss_func=nn.MSELoss())
cb = DDPTrainer(sync_bn=True); learn.add_cb(cb)
cb('before_fit')                                       # what fit does first; training SyncBatchNorm needs GPUs
wrapped = learn.model
with torch.no_grad(): out = wrapped.module.eval()(x)
cb('after_fit')
b = RankBudget(time.time() + 100)
if rank: time.sleep(1.5)                               # rank 1 reads its budget 1.5 s later
left = b.left
got = [None, None]; dist.all_gather_object(got, dict(synced=isinstance(wrapped, DDP) and any(isinstance(o, nn.SyncBatchNorm) for o in wrapped.modules()),
                                                    same=torch.equal(out, ref), bare=learn.model is m, left=left, own=time.time()))
if rank == 0: print('RESULT', json.dumps(got))
import gc; del wrapped, learn, cb; gc.collect()         # no DDP wrapper outlives its process group (an abort at exit)
dist.barrier(); teardown()
'''

def test_ddp_trainer_syncs_batch_norms_on_a_copy_and_ranks_share_a_deadline(tmp_path):
    "Two gloo ranks: DDPTrainer's synced copy computes what the model did and the model comes back bare; `RankBudget.left` is rank 0's on both"
    (tmp_path/'ranks.py').write_text(RANKS)
    import os, subprocess, sys
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(tmp_path/'ranks.py')],
                       capture_output=True, text=True, env=env, timeout=300)
    line = next((l for l in r.stdout.splitlines() if l.startswith('RESULT')), None)
    assert r.returncode == 0 and line, r.stdout[-2000:] + r.stderr[-3000:]
    got = json.loads(line.split(' ', 1)[1])
    assert all(o['synced'] and o['same'] and o['bare'] for o in got)
    assert got[0]['left'] == got[1]['left']                                 # one figure: both ranks plan and stop alike
    assert 95 < got[0]['left'] <= 100

def _ddp_inputs(tmp_path, p, n_whales=6, per_whale=3, n_new=3):
    "Photos as `fit_ddp` hands them to the ranks (a .npy, ids, validation rows), and its argument list for `whale_kernel.ddp`"
    from whale_kernel.data import valid_split
    from test_utils import toy_whales
    imgs, ids = toy_whales(n_ids=n_whales, per_id=per_whale, n_new=n_new, size=tuple(p.size))
    va = valid_split(pd.DataFrame(dict(Id=ids)), seed=p.seed)
    work = tmp_path/'in'; work.mkdir()
    np.save(work/'imgs.npy', imgs); (work/'ids.txt').write_text('\n'.join(ids) + '\n')
    (work/'valid.txt').write_text('\n'.join(map(str, np.flatnonzero(va))) + '\n')
    return imgs, ids, va, ['--imgs', work/'imgs.npy', '--ids', work/'ids.txt', '--valid', work/'valid.txt']

KAGGLE_TINY = dict(size=(32, 64), bs=4, workers=0, weights=None, emb_dim=16, arcface_steps=8, arcface_epochs=(2, 2),
                   arcface_ft_epochs=(4, 4), patience=100, rerank=False, pseudo=False, max_splits=1)

def test_kaggle_preset_on_two_ranks_killed_mid_fine_tune_resumes(tmp_path):
    "The `kaggle` preset's ArcFace ('auto': frozen, then the fine-tune of the whole net) on two gloo ranks, killed after the fine-tune's first checkpoint: the parent process, out of time, keeps that fine-tune; the same command resumes it"
    import os, signal, subprocess, sys
    from whale_kernel.core import get_preset, TimeBudget
    from whale_kernel.arcface import fit_arcface
    from whale_kernel.pipeline import quiet_bars
    from whale_kernel.train import load_checkpoint
    p = get_preset('kaggle', **KAGGLE_TINY)
    imgs, ids, va, inputs = _ddp_inputs(tmp_path, p)
    out = tmp_path/'out'
    sets = [f'{k}={json.dumps(v)}' for k,v in KAGGLE_TINY.items() if k != 'size']
    args = ['--model', 'arcface', *inputs, '--out', out, '--preset', 'kaggle', '--backend', 'gloo', '--set', *sets]
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m', 'whale_kernel.ddp', *map(str, args)]
    thaw = out/'arcface'/'arcface_thaw.pth'
    with open(tmp_path/'first.log', 'w') as f:
        r = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        t0 = time.monotonic()
        while not thaw.exists() and r.poll() is None and time.monotonic() - t0 < 300: time.sleep(0.05)
        r.send_signal(signal.SIGTERM); r.wait()           # torchrun passes it on to the ranks and waits for them
    log = (tmp_path/'first.log').read_text()
    assert thaw.exists() and not (out/'arcface_weights.pth').exists(), log[-3000:]      # killed mid-fine-tune
    k = load_checkpoint(thaw)['epoch']; assert k < 3
    # the parent process: its budget spent, it judges the fine-tune the ranks checkpointed, trains nothing
    parent = tmp_path/'parent'; shutil.copytree(out/'arcface', parent)
    tr = np.flatnonzero(~va); vk = np.flatnonzero(va & (ids != 'new_whale'))
    with quiet_bars(True): learn = fit_arcface(imgs, ids, tr, vk, preset=p, path=parent, budget=TimeBudget(0))
    assert learn.fit_log == [] and len(learn.selectors[-1].hist) == k + 1 and 'fine-tune' in learn.kept
    # the same command again: both ranks resume the fine-tune where it stopped
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = [json.loads((out/f'rank{i}.json').read_text()) for i in (0, 1)]
    assert res[0]['digest'] == res[1]['digest']
    assert [(o['stage'], o['start']) for o in res[0]['fit_log']] == [('thaw', k + 1)]     # no frozen epoch again, the fine-tune resumed
    assert load_checkpoint(thaw)['epoch'] == 3 and (out/'arcface_weights.pth').exists()
