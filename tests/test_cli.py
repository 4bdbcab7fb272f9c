"Bad command lines and bad input end in one line naming the culprit and exit 2, never in a traceback."
import subprocess, sys
import pytest
from whale_kernel.cli import main, _parser
from whale_kernel.core import PRESETS

def run_main(argv, capsys):
    "Exit code and stderr of `main(argv)`, whether it returns or exits"
    try: rc = main(argv)
    except SystemExit as e: rc = e.code
    return rc, capsys.readouterr().err

def one_line(s): return s.count('\n') == 1 and 'Traceback' not in s

def test_models_default_and_validation(capsys):
    assert _parser().parse_args(['run']).models == ['knn', 'arcface', 'siamese']
    assert _parser().parse_args(['run', '--models', 'siamese, knn,knn']).models == ['siamese', 'knn']
    rc, err = run_main(['run', '--models', 'knn,svm'], capsys)
    assert rc == 2 and one_line(err) and "'knn,svm'" in err and 'knn,arcface,siamese' in err

def test_preset_choices_come_from_presets(capsys):
    act = next(a for a in _parser()._subparsers._group_actions[0].choices['run']._actions if a.dest == 'preset')
    assert act.choices == sorted(PRESETS)
    rc, err = run_main(['run', '--preset', 'gpu'], capsys)
    assert rc == 2 and one_line(err) and "'gpu'" in err

@pytest.mark.parametrize('argv', [['run', '--out', '{f}'], ['synth', '{f}'], ['bundle', '--out', '{f}'], ['weights', '{f}']])
def test_out_that_is_a_file(tmp_path, capsys, argv):
    f = tmp_path/'taken.txt'; f.write_text('keep me')
    rc, err = run_main([a.format(f=f) for a in argv], capsys)
    assert rc == 2 and one_line(err) and str(f) in err and 'is a file' in err
    assert f.read_text() == 'keep me'

def test_bad_data_names_the_file(tmp_path, capsys):
    rc, err = run_main(['run', '--data', str(tmp_path/'none'), '--out', str(tmp_path/'o')], capsys)
    assert rc == 2 and one_line(err) and str(tmp_path/'none') in err
    (tmp_path/'comp'/'train').mkdir(parents=True); (tmp_path/'comp'/'test').mkdir()
    (tmp_path/'comp'/'train.csv').write_text('Image,Whale\na.jpg,w_1\n')
    rc, err = run_main(['run', '--data', str(tmp_path/'comp'), '--out', str(tmp_path/'o')], capsys)
    assert rc == 2 and one_line(err) and 'train.csv' in err

def test_bad_submission_names_the_file(tmp_path, capsys):
    rc, err = run_main(['score', str(tmp_path/'sub.csv'), str(tmp_path/'sol.csv')], capsys)
    assert rc == 2 and one_line(err) and ('sub.csv' in err or 'sol.csv' in err)
    (tmp_path/'sol.csv').write_text('Image,Id\na.jpg,w_1\n'); (tmp_path/'sub.csv').write_bytes(b'\x00\xff garbage')
    rc, err = run_main(['score', str(tmp_path/'sub.csv'), str(tmp_path/'sol.csv')], capsys)
    assert rc == 2 and one_line(err) and 'sub.csv' in err

def test_console_entry_point_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'whale_kernel.cli', 'run', '--data', str(tmp_path/'none'), '--out', str(tmp_path/'o')],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and one_line(r.stderr) and str(tmp_path/'none') in r.stderr, r.stderr
