"MAP@5 on hand-worked cases, new_whale insertion, and the submission checker's rejections."
import subprocess, sys
import numpy as np, pytest
from whale_kernel.metrics import (apk5, map5, reduce_by_id, predict_top5, best_threshold, threshold_curve, ratio_threshold,
                                  query_aps, write_submission, check_submission, score_submission, SubmissionError)
from whale_kernel.cli import main

def test_map5_hand_worked():
    preds = ['w_1 w_2 w_3 w_4 w_5', 'w_2 w_1', 'new_whale w_9', 'w_3 w_4 w_5 w_6 w_7', 'w_8 w_7 w_6 w_5 w_4 w_3']
    truth = ['w_1', 'w_1', 'new_whale', 'w_7', 'w_3']
    assert map5(preds, truth) == pytest.approx((1 + 1/2 + 1 + 1/5 + 0)/5)
    assert apk5(['a','a','b'], 'b') == pytest.approx(1/3)

def test_insertion_modes():
    s = np.array([[.9,.5,.1],[.3,.2,.1],[.6,.7,.65]])
    ids = ['a','b','c']
    assert [p[0] for p in predict_top5(s, ids, thr=.4)] == ['a','new_whale','b']
    assert predict_top5(s, ids, thr=.4)[0] == ['a','b','new_whale','c']
    assert [p[0] for p in predict_top5(s, ids, thr=ratio_threshold(s, 1/3)+1e-6)].count('new_whale') == 1
    thr, m = best_threshold(s, ids, ['a','new_whale','b'])
    assert m == 1.0 and .3 <= thr < .7

def test_reduce_by_id():
    sims = np.array([[.1, .9, .3, .5, .2], [.8, .0, .4, .6, .7]])
    g = ['w_b', 'new_whale', 'w_a', 'w_b', 'w_c']
    s, ids = reduce_by_id(sims, g)
    assert ids == ['w_a', 'w_b', 'w_c'] and s.dtype == np.float32                     # sorted, new_whale dropped
    np.testing.assert_allclose(s, [[.3, .5, .2], [.4, .8, .7]])
    np.testing.assert_allclose(reduce_by_id(sims, g, reduce='mean')[0], [[.3, .3, .2], [.4, .7, .7]])
    s, ids = reduce_by_id(sims, g, ids=['w_c', 'w_z', 'w_a', 'w_b'])                   # a given id order; unseen ids -inf
    np.testing.assert_allclose(s, [[.2, -np.inf, .3, .5], [.7, -np.inf, .4, .8]])
    with pytest.raises(ValueError, match='reduce'): reduce_by_id(sims, g, reduce='median')

def _random_case(seed, q=60, n=9):
    rng = np.random.default_rng(seed)
    ids = [f'w{i}' for i in range(n)]
    s = rng.random((q, n)).astype(np.float32); s[:, 3] = s[:, 2]                      # some ties
    truth = rng.choice(ids + ['new_whale']*3 + ['w_unseen'], q)
    return s, ids, truth

@pytest.mark.parametrize('seed', [0, 1])
def test_query_aps_matches_the_loop(seed):
    "The vectorised AP@5 equals `apk5` of `predict_top5`, for no threshold, one threshold and many"
    s, ids, truth = _random_case(seed)
    for thr in (None, .5, .95, -1.):
        want = [apk5(p, t) for p,t in zip(predict_top5(s, ids, thr), truth)]
        np.testing.assert_allclose(query_aps(s, ids, truth, thr), want, err_msg=f'thr={thr}')
    thrs = np.array([.2, .6, .9])
    aps = query_aps(s, ids, truth, thrs)
    assert aps.shape == (3, len(truth))
    for t,row in zip(thrs, aps): np.testing.assert_allclose(row, query_aps(s, ids, truth, t))

def test_threshold_curve_matches_map5():
    s, ids, truth = _random_case(2)
    t, m = threshold_curve(s, ids, truth)
    assert len(t) >= 100 and (np.diff(t) > 0).all()
    for i in (0, 17, 50, len(t) - 1):
        assert m[i] == pytest.approx(map5(predict_top5(s, ids, t[i]), truth))
    thr, best = best_threshold(s, ids, truth, smooth=1)
    assert best == pytest.approx(m.max()) and thr == t[int(np.argmax(m))]
    thr, best = best_threshold(s, ids, truth)
    assert best == pytest.approx(m[list(t).index(thr)])                   # the figure is the MAP@5 at the chosen threshold
    assert best_threshold(s, ids, truth, thrs=[.3])[0] == pytest.approx(.3)

def test_best_threshold_prefers_a_plateau_to_a_spike(monkeypatch):
    import whale_kernel.metrics as wm
    t, m = np.arange(30.), np.full(30, .5); m[3] = .9; m[12:22] = .8
    monkeypatch.setattr(wm, 'threshold_curve', lambda *a, **k: (t, m))
    assert best_threshold(None, None, None, smooth=1) == (3., .9)
    thr, best = best_threshold(None, None, None)
    assert 12 <= thr < 22 and best == .8

BAD = {
    'Image,Label\na.jpg,w_1\nb.jpg,w_1\n': 'header must be',
    'Image,Id\na.jpg,w_1 w_2 w_3 w_4 w_5 w_6\nb.jpg,w_1\n': 'more than 5 labels on line(s) 2',
    'Image,Id\na.jpg,w_1 w_1\nb.jpg,w_1\n': 'repeated labels',
    'Image,Id\na.jpg,w_1\na.jpg,w_2\nb.jpg,w_1\n': 'listed more than once',
    'Image,Id\na.jpg,w_1\n': 'missing',
    'Image,Id\na.jpg,w_1\nb.jpg,w_1\nc.jpg,w_1\n': 'unknown image',
    'Image,Id\na.jpg,\nb.jpg,w_1\n': 'empty cell',
    'Image,Id,Extra\na.jpg,w_1,x\nb.jpg,w_1,x\n': 'header must be',
}

@pytest.fixture
def sol(tmp_path):
    (tmp_path/'sol.csv').write_text('Image,Id\na.jpg,w_1\nb.jpg,new_whale\n'); return tmp_path/'sol.csv'

@pytest.mark.parametrize('txt,msg', list(BAD.items()))
def test_checker_rejects(tmp_path, sol, txt, msg, capsys):
    (tmp_path/'bad.csv').write_text(txt)
    with pytest.raises(SubmissionError, match='bad.csv') as e: score_submission(tmp_path/'bad.csv', sol)
    assert msg in str(e.value)
    assert main(['score', str(tmp_path/'bad.csv'), str(sol)]) == 2
    assert msg in capsys.readouterr().err

def test_write_submission_is_atomic(tmp_path):
    fn = write_submission(tmp_path/'out'/'sub.csv', ['a.jpg', 'b.jpg'], [['w_1', 'new_whale'], 'w_2 w_1'])
    assert fn.read_text() == 'Image,Id\na.jpg,w_1 new_whale\nb.jpg,w_2 w_1\n'
    before = fn.read_bytes()
    with pytest.raises(SubmissionError, match='more than 5'):
        write_submission(fn, ['a.jpg', 'b.jpg'], [['w_1'], [f'w_{i}' for i in range(6)]])
    assert fn.read_bytes() == before                                       # the old file is left as it was

def test_score_cli_last_line(tmp_path, sol):
    write_submission(tmp_path/'sub.csv', ['a.jpg','b.jpg'], [['w_2','w_1'], ['new_whale']])
    r = subprocess.run([sys.executable, '-m', 'whale_kernel.cli', 'score', str(tmp_path/'sub.csv'), str(sol)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip().splitlines()[-1].split()[-1]) == pytest.approx(0.75)
