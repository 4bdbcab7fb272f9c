"MAP@5 on hand-worked cases, new_whale insertion, and the submission checker's rejections."
import subprocess, sys
import numpy as np, pytest
from whale_kernel.metrics import (apk5, map5, predict_top5, best_threshold, ratio_threshold, write_submission,
                                  check_submission, score_submission, SubmissionError)
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

def test_score_cli_last_line(tmp_path, sol):
    write_submission(tmp_path/'sub.csv', ['a.jpg','b.jpg'], [['w_2','w_1'], ['new_whale']])
    r = subprocess.run([sys.executable, '-m', 'whale_kernel.cli', 'score', str(tmp_path/'sub.csv'), str(sol)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip().splitlines()[-1].split()[-1]) == pytest.approx(0.75)
