"End-to-end runs of the pipeline and CLI: a smoke run over the real photo samples, bad competition dirs."
import shutil, subprocess, sys
from pathlib import Path
import pandas as pd, pytest
from whale_kernel.pipeline import run
from whale_kernel.metrics import check_submission
from whale_kernel.cli import main

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
    sub = check_submission(tmp_path/'out'/'submission.csv', pd.read_csv(data/'solution.csv').Image)
    assert len(sub) == summ['n_test'] and 0 <= summ['test']['knn'] <= 1
    assert (tmp_path/'out'/'report.png').exists() and 'validation MAP@5' in capsys.readouterr().out
    # a rerun reuses the finished scores instead of recomputing them
    run(data, tmp_path/'out', models=['knn'], size=(64,128), bs=8)
    assert 'reusing finished scores' in wklog.text

def test_cli_run_bad_data_exits_with_reason(tmp_path, capsys):
    (tmp_path/'d').mkdir()
    assert main(['run', '--data', str(tmp_path/'d'), '--out', str(tmp_path/'o')]) == 2
    err = capsys.readouterr().err
    assert 'train.csv: file not found' in err and str(tmp_path/'d') in err
