"DDP (`whale_kernel.ddp`): a real two-process run on the CPU with gloo, through torchrun in a subprocess"
import json
from dataclasses import fields
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
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
            siamese_steps=8, siamese_epochs=(2, 2), rerank=False, pseudo=False)

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
