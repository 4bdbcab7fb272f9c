"The synthetic competition: exact layout, long-tail counts, new_whale shares, determinism and true boxes."
import re, filecmp
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image
from whale_kernel.synth import (make_synth, plan_competition, render_photo, make_whale, make_scene, rng_for,
                                synth_summary, long_tail_counts, NEW_WHALE)

N, SEED = 16, 3                     # a tiny competition: ~80 photos, a few seconds

@pytest.fixture(scope='module')
def comp(tmp_path_factory): return make_synth(tmp_path_factory.mktemp('synth')/'comp', n_whales=N, seed=SEED)

def csv(d, name): return pd.read_csv(d/name)

def test_layout_and_columns(comp):
    assert {p.name for p in comp.iterdir()} == {'train', 'test', 'train.csv', 'sample_submission.csv', 'solution.csv', 'bounding_boxes.csv'}
    tr, sol, sub, bb = (csv(comp, f) for f in ('train.csv', 'solution.csv', 'sample_submission.csv', 'bounding_boxes.csv'))
    assert list(tr.columns) == ['Image', 'Id'] and list(sol.columns) == ['Image', 'Id'] and list(sub.columns) == ['Image', 'Id']
    assert list(bb.columns) == ['Image', 'x0', 'y0', 'x1', 'y1']
    assert sorted(p.name for p in (comp/'train').iterdir()) == sorted(tr.Image)
    assert sorted(p.name for p in (comp/'test').iterdir()) == sorted(sol.Image) == sorted(sub.Image)
    assert all(re.fullmatch(r'[0-9a-f]{8}\.jpg', n) for n in pd.concat([tr.Image, sol.Image]))
    assert all(i == NEW_WHALE or re.fullmatch(r'w_[0-9a-f]{7}', i) for i in pd.concat([tr.Id, sol.Id]))
    assert tr.Image.is_monotonic_increasing and sol.Image.is_monotonic_increasing         # sorted, like Kaggle's
    labels = sub.Id[0].split()
    assert (sub.Id == sub.Id[0]).all() and labels[0] == NEW_WHALE and len(labels) == 5 and set(labels[1:]) <= set(tr.Id)
    assert synth_summary(comp)['ids'] == N

def test_no_collisions_and_solution_covers_test(comp):
    tr, sol, bb = csv(comp, 'train.csv'), csv(comp, 'solution.csv'), csv(comp, 'bounding_boxes.csv')
    assert not set(tr.Image) & set(sol.Image)
    assert sol.Image.is_unique and tr.Image.is_unique
    assert sorted(sol.Image) == sorted(p.name for p in (comp/'test').glob('*.jpg'))          # one answer per test photo
    assert sorted(bb.Image) == sorted(pd.concat([tr.Image, sol.Image]))                    # a box for every photo
    known = set(tr.Id) - {NEW_WHALE}
    assert set(sol.Id) - {NEW_WHALE} <= known                                               # test ids are known ids or new_whale

def test_boxes_inside_images(comp):
    bb = csv(comp, 'bounding_boxes.csv').set_index('Image')
    for split in ('train', 'test'):
        for fn in (comp/split).glob('*.jpg'):
            with Image.open(fn) as im: w, h = im.size
            x0, y0, x1, y1 = bb.loc[fn.name]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (fn, (x0, y0, x1, y1), (w, h))
            assert x1 - x0 >= 0.1*w                                                         # a fluke, not a speck

def test_boxes_match_renderer(comp):
    "The box file holds what `render_photo` reports for the same streams"
    plan, bb = plan_competition(N, SEED), csv(comp, 'bounding_boxes.csv').set_index('Image')
    for i in [0, 5, len(plan) - 1]:
        r = plan.iloc[i]
        _, box = render_photo(make_whale(SEED, r.whale), rng_for(SEED, 2, i), make_scene(rng_for(SEED, 4, r.whale, r.scene)))
        assert tuple(bb.loc[r.Image]) == box

def _plain_scene():
    s = make_scene(rng_for(0, 4, 0))
    return {**s, 'sea': np.float32([.35, .42, .5]), 'slope': 0., 'waves': (0., 0.), 'glint': (99., 0.), 'noise': 0.,
            'foam': 99., 'gray': False}

@pytest.mark.parametrize('i', range(6))
def test_box_is_the_fluke(i):
    "On a flat sea with no foam, the pixels that differ from the sea are the fluke, and the box is tight around them"
    im, (x0, y0, x1, y1) = render_photo(make_whale(1, i), rng_for(1, 2, i), _plain_scene(), difficulty=0)
    a = np.asarray(im, np.float32)/255
    fluke = np.abs(a - a[0, 0]).max(-1) > .12
    fluke[:, 0] = fluke[:, -1] = fluke[0] = fluke[-1] = False                              # ignore resampling at the border
    ys, xs = np.nonzero(fluke)
    assert max(abs(xs.min() - x0), abs(xs.max() + 1 - x1), abs(ys.min() - y0), abs(ys.max() + 1 - y1)) <= 2

def test_counts_and_new_whale_shares():
    for seed in (0, 1):
        p = plan_competition(seed=seed)
        tr, te = p[p.split == 'train'], p[p.split == 'test']
        assert 900 <= len(tr) <= 1200 and 280 <= len(te) <= 400
        assert abs((tr.Id == NEW_WHALE).mean() - .38) < .01 and abs((te.Id == NEW_WHALE).mean() - .276) < .01
        vc = tr.Id[tr.Id != NEW_WHALE].value_counts()
        assert len(vc) == 220 and (vc <= 2).mean() > .6 and vc.max() >= 10                  # long tail
        nw_tr = tr.whale[tr.Id == NEW_WHALE]
        assert nw_tr.is_unique and not set(nw_tr) & set(te.whale)                          # new_whale: seen nowhere else
        assert not set(te.whale[te.Id == NEW_WHALE]) & set(tr.whale)                       # unseen in train
        assert p.Image.is_unique
    c = long_tail_counts(rng_for(0), 10_000, 73)
    assert abs((c == 1).mean() - .41) < .01 and abs((c == 2).mean() - .26) < .01 and c.max() > 30

def test_deterministic(comp, tmp_path):
    again = make_synth(tmp_path/'again', n_whales=N, seed=SEED, n_workers=2)               # parallel == serial
    for f in ('train.csv', 'solution.csv', 'sample_submission.csv', 'bounding_boxes.csv'):
        assert (comp/f).read_bytes() == (again/f).read_bytes(), f
    for split in ('train', 'test'):
        names = sorted(p.name for p in (comp/split).iterdir())
        _, mismatch, errors = filecmp.cmpfiles(comp/split, again/split, names, shallow=False)
        assert not mismatch and not errors
    other = make_synth(tmp_path/'other', n_whales=N, seed=SEED + 1)
    assert (comp/'train.csv').read_bytes() != (other/'train.csv').read_bytes()

def test_rerun_and_bad_input(comp, tmp_path):
    make_synth(comp, n_whales=N, seed=SEED)                                                # same competition: fine
    with pytest.raises(FileExistsError, match='another competition'): make_synth(comp, n_whales=N, seed=SEED + 1)
    (tmp_path/'afile').write_text('x')
    with pytest.raises(FileExistsError, match='afile'): make_synth(tmp_path/'afile', n_whales=2)
    with pytest.raises(ValueError, match='n_whales'): make_synth(tmp_path/'x', n_whales=0)
    with pytest.raises(ValueError, match='new_frac'): plan_competition(10, new_frac=1.2)
    d = make_synth(tmp_path/'ow', n_whales=3, seed=0)
    make_synth(d, n_whales=3, seed=1, overwrite=True)
    assert sorted(p.name for p in (d/'train').iterdir()) == sorted(csv(d, 'train.csv').Image)
