"""The Kaggle kernel: the committed bundle is fresh, the real kaggle CLI accepts its metadata offline, the weights
dataset loads strictly into timm and still sees an espresso, and the bundle runs, internet off, in a Python 3.12 venv
holding exactly the versions of Kaggle's image."""
import json, os, re, sys, subprocess, time
from pathlib import Path
from types import SimpleNamespace
import numpy as np, pandas as pd, pytest, torch, timm
from whale_kernel.kernel import (bundle, owner, kernel_metadata, find_weights, find_data, find_boxes, weights_dataset, lite_file,
                                 kernel_nb, nb_script, pkg_files, check_sub, CODE_FILE, COMPETITION, WEIGHTS_SLUG, LITE, BOXES_KERNEL)
from whale_kernel.backbone import WeightsError, RANDOM_INIT
from whale_kernel.cli import main

root = Path(__file__).resolve().parents[1]
KAGGLE_VENV = root/'tools'/'kaggle_venv.sh'

# Refuses connections beyond this machine, and DNS, in the process it runs in, noting each attempt in $WHALE_NONET_LOG.
NONET = '''import os, socket, traceback
def _note(what):
    with open(os.environ.get('WHALE_NONET_LOG', os.devnull), 'a') as f: f.write(what + '\\n' + ''.join(traceback.format_stack()))
def _local(addr): return not isinstance(addr, tuple) or str(addr[0]) in ('', 'localhost', '::1', '0.0.0.0') or str(addr[0]).startswith('127.')
class _NoNet(socket.socket):
    def connect(self, addr):
        if not _local(addr): _note(f'connect({addr})'); raise OSError('network call attempted')
        return super().connect(addr)
    def connect_ex(self, addr):
        if not _local(addr): _note(f'connect_ex({addr})'); raise OSError('network call attempted')
        return super().connect_ex(addr)
    def sendto(self, data, *a):
        if not _local(a[-1]): _note(f'sendto({a[-1]})'); raise OSError('network call attempted')
        return super().sendto(data, *a)
_gai = socket.getaddrinfo
def _getaddrinfo(host, *a, **k):
    if host not in (None, 'localhost', '127.0.0.1', '::1', '0.0.0.0'): _note(f'getaddrinfo({host})'); raise socket.gaierror('network call attempted')
    return _gai(host, *a, **k)
socket.socket, socket.getaddrinfo = _NoNet, _getaddrinfo
'''

def one_line(s): return s.count('\n') == 1 and 'Traceback' not in s

@pytest.fixture(scope='module')
def fake_kaggle(tmp_path_factory):
    "A fake /kaggle/input, each source in its own folder: a 12-whale synthetic competition (no boxes), the `whale-kernel weights` dataset of the cpu preset's backbones, and the boxes notebook's output"
    from whale_kernel.synth import make_synth
    tmp = tmp_path_factory.mktemp('kaggle')
    comp = make_synth(tmp/'input'/COMPETITION, n_whales=12)
    (comp/'solution.csv').rename(tmp/'solution.csv')                 # Kaggle keeps the answers
    boxes = tmp/'input'/BOXES_KERNEL.split('/')[1]/'bounding_boxes.csv'; boxes.parent.mkdir()
    (comp/'bounding_boxes.csv').rename(boxes)                        # the community's boxes: another notebook's output
    archs = ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
    wts = weights_dataset(tmp/'input'/'datasets'/'bob'/WEIGHTS_SLUG, archs, user='bob')
    return SimpleNamespace(root=tmp, input=tmp/'input', comp=comp, weights=wts, boxes=boxes, solution=tmp/'solution.csv')

# --- the bundle and its metadata ---

def test_committed_bundle_is_fresh(tmp_path):
    md = root/'kernel-metadata.json'
    nb = bundle(tmp_path, user=owner(md))
    assert nb.read_bytes() == (root/CODE_FILE).read_bytes(), f'{CODE_FILE} is stale: run `whale-kernel bundle` at the repo root'
    assert (tmp_path/'kernel-metadata.json').read_text() == md.read_text(), 'kernel-metadata.json is stale: run `whale-kernel bundle`'

def test_bundle_user_and_determinism(tmp_path):
    a, b = tmp_path/'a', tmp_path/'b'
    assert main(['bundle', '--out', str(a), '--user', 'bob']) == 0
    assert main(['bundle', '--out', str(a)]) == 0                        # keeps the owner already there
    assert main(['bundle', '--out', str(b), '--user', 'alice']) == 0
    ma, mb = (json.loads((o/'kernel-metadata.json').read_text()) for o in (a, b))
    assert ma['id'] == 'bob/whale-kernel' and ma['dataset_sources'] == ['bob/whale-kernel-weights']
    assert {k for k in ma if ma[k] != mb[k]} == {'id', 'dataset_sources'}
    assert (a/CODE_FILE).read_bytes() == (b/CODE_FILE).read_bytes()   # the notebook does not depend on the owner
    text = (a/CODE_FILE).read_text()
    assert not re.search(r'20\d\d-\d\d-\d\d', text), 'no dates in the bundle'

def test_bundle_packs_every_module():
    nb = kernel_nb(pkg_files())
    src = ''.join(nb['cells'][1]['source'])
    assert nb['cells'][1]['cell_type'] == 'code' and src.startswith('# The whale_kernel package')
    names = {f.name for f in pkg_files()}
    assert {'__init__.py', 'core.py', 'pipeline.py', 'kernel.py'} <= names and '_modidx.py' not in names
    assert all('pip install' not in ''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code')

def test_root_metadata_contract():
    md = json.loads((root/'kernel-metadata.json').read_text())
    user = md['id'].split('/')[0]
    assert md == kernel_metadata(user)
    assert md['id'] == f'{user}/whale-kernel' and md['title'] == 'Whale Kernel'
    assert (root/md['code_file']).is_file() and md['code_file'] == CODE_FILE
    assert (md['language'], md['kernel_type']) == ('python', 'notebook')
    assert md['is_private'] is True and md['enable_gpu'] is True and md['enable_internet'] is False
    assert md['machine_shape'] == 'NvidiaTeslaT4'
    assert md['competition_sources'] == ['humpback-whale-identification']
    assert md['dataset_sources'] == [f'{user}/whale-kernel-weights']
    assert md['kernel_sources'] == ['suicaokhoailang/generating-whale-bounding-boxes'] and md['model_sources'] == []

def _kaggle_api(monkeypatch, tmp_path):
    "The real `KaggleApi` class, imported with dummy credentials; skip when kaggle is not installed"
    monkeypatch.setenv('KAGGLE_USERNAME', 'whale-kernel'); monkeypatch.setenv('KAGGLE_KEY', '0'*32)
    monkeypatch.setenv('KAGGLE_CONFIG_DIR', str(tmp_path))
    try: from kaggle.api.kaggle_api_extended import KaggleApi
    except Exception as e: pytest.skip(f'kaggle CLI not importable ({type(e).__name__}: {e}); pip install kaggle six')
    return KaggleApi

def test_kaggle_cli_accepts_metadata_offline(monkeypatch, tmp_path, capsys):
    KaggleApi = _kaggle_api(monkeypatch, tmp_path)
    sent = []
    class Client:                                    # what `build_kaggle_client()` returns, minus the network
        kernels = SimpleNamespace(kernels_api_client=SimpleNamespace(
            save_kernel=lambda req: sent.append(req) or SimpleNamespace(error=None)))
        def __enter__(self): return self
        def __exit__(self, *a): return False
    monkeypatch.setattr(KaggleApi, 'build_kaggle_client', lambda self: Client())
    api = KaggleApi(); api.authenticate()
    api.kernels_push(str(root))
    assert len(sent) == 1
    req, md = sent[0], json.loads((root/'kernel-metadata.json').read_text())
    nb = json.loads((root/CODE_FILE).read_text())
    for c in nb['cells']:                            # what kernels_push does to a notebook: drop outputs, join sources
        c['source'] = ''.join(c['source'])
        if c['cell_type'] == 'code': c['outputs'] = []
    assert json.loads(req.text) == nb
    assert (req.slug, req.new_title, req.language, req.kernel_type) == (md['id'], 'Whale Kernel', 'python', 'notebook')
    assert req.enable_gpu is True and req.enable_internet is False and req.is_private is True and req.enable_tpu is False
    assert req.machine_shape == 'NvidiaTeslaT4'
    assert list(req.competition_data_sources) == ['humpback-whale-identification']
    assert list(req.dataset_data_sources) == md['dataset_sources']
    assert list(req.kernel_data_sources) == md['kernel_sources']
    assert 'does not resolve' not in capsys.readouterr().out  # the title's slug matches the id

# --- finding things under /kaggle/input ---

def test_find_data_and_weights(fake_kaggle, tmp_path, monkeypatch, wklog):
    assert find_data(fake_kaggle.comp) == fake_kaggle.comp
    newer = tmp_path/'input'/'competitions'/COMPETITION
    (newer/'test').mkdir(parents=True); (newer/'train.csv').write_text('Image,Id\n')
    assert find_data(tmp_path/'input'/COMPETITION) == newer
    with pytest.raises(FileNotFoundError, match='attach the "humpback-whale-identification" competition'):
        find_data(tmp_path/'nothing'/COMPETITION)
    assert find_weights('efficientnet_lite0', fake_kaggle.input) == str(fake_kaggle.weights)
    assert find_weights(['efficientnet_lite0', 'efficientnet_lite2'], fake_kaggle.input) == str(fake_kaggle.weights)
    with pytest.raises(WeightsError, match=r'no resnet50.pth under .*whale-kernel weights DIR --arch resnet50') as e:
        find_weights('resnet50', fake_kaggle.input)
    assert RANDOM_INIT in str(e.value) and '\n' not in str(e.value)
    if lite_file('efficientnet_lite0'): assert find_weights('efficientnet_lite0', tmp_path/'empty') == 'offline'
    monkeypatch.setenv(RANDOM_INIT, '1')
    assert find_weights('resnet50', fake_kaggle.input) is None and 'training from random init' in wklog.text

def test_find_boxes(fake_kaggle, tmp_path):
    assert find_boxes(fake_kaggle.input, fake_kaggle.comp) == fake_kaggle.boxes
    own = tmp_path/'comp'; own.mkdir(); (own/'bounding_boxes.csv').write_text('Image,x0,y0,x1,y1\n')
    assert find_boxes(fake_kaggle.input, own) == own/'bounding_boxes.csv'       # the competition's own folder first
    assert find_boxes(tmp_path/'empty') is None

def test_kernel_cells_run_with_sockets_disabled(fake_kaggle, tmp_path):
    "The package, config and data cells of the committed bundle, in a fresh interpreter whose internet sockets raise"
    nb = json.loads((root/CODE_FILE).read_text())
    cells = {c['id']: ''.join(c['source']) for c in nb['cells']}
    check = ('\nimport whale_kernel.pipeline, whale_kernel.arcface, whale_kernel.siamese\n'
             'assert whale_kernel.__path__[0].startswith(PKG_DIR), whale_kernel.__path__\n'
             'print("DATA", DATA); print("WEIGHTS", WEIGHTS); print("BOXES", BOXES)\n')
    src = NONET + '\n'.join(cells[k] for k in ('package', 'config', 'data')) + check
    env = os.environ | dict(WHALE_KAGGLE_INPUT=str(fake_kaggle.comp), WHALE_KAGGLE_WORKING=str(tmp_path/'working'),
                            WHALE_PRESET='cpu', WHALE_NONET_LOG=str(tmp_path/'nonet.log'), MPLBACKEND='Agg')
    env.pop('WHALE_WEIGHTS', None)
    (tmp_path/'cells.py').write_text(src)                   # a file: the cells outgrow one argument's 128 KiB limit
    r = subprocess.run([sys.executable, 'cells.py'], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'DATA {fake_kaggle.comp}' in r.stdout and f'WEIGHTS {fake_kaggle.weights}' in r.stdout and f'BOXES {fake_kaggle.boxes}' in r.stdout
    assert not (tmp_path/'nonet.log').exists(), (tmp_path/'nonet.log').read_text()

# --- the weights dataset ---

@pytest.mark.parametrize('arch,sz', [('efficientnet_lite0', 224), ('efficientnet_lite1', 240), ('efficientnet_lite2', 260)])
def test_weights_dataset_sees_an_espresso(tmp_path, arch, sz):
    if lite_file(arch) is None: pytest.skip(f'{LITE[arch]} not installed')
    skdata = pytest.importorskip('skimage.data')
    from PIL import Image
    from whale_kernel.data import img_batches
    assert main(['weights', str(tmp_path), '--arch', arch, '--user', 'bob']) == 0
    md = json.loads((tmp_path/'dataset-metadata.json').read_text())
    assert md['id'] == 'bob/whale-kernel-weights' and 6 <= len(md['title']) <= 50 and 20 <= len(md['subtitle']) <= 80
    assert md['licenses'] == [{'name': 'apache-2.0'}] and md['resources'][0]['path'] == f'{arch}.pth'
    m = timm.create_model(arch).eval()
    m.load_state_dict(torch.load(tmp_path/f'{arch}.pth', weights_only=True), strict=True)
    x = np.asarray(Image.fromarray(skdata.coffee()).resize((sz, sz)))[None]
    with torch.no_grad(): p = m(next(img_batches(x, bs=1))).softmax(1)[0]
    assert int(p.argmax()) == 967 and p.max() > 0.6                  # ImageNet 967: espresso

def test_weights_errors(tmp_path, capsys):
    assert main(['weights', str(tmp_path/'w'), '--arch', 'no_such_net']) == 2
    err = capsys.readouterr().err
    assert one_line(err) and 'no_such_net' in err
    env = os.environ | dict(HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path/'hf'))   # a model timm would have to download
    r = subprocess.run([sys.executable, '-m', 'whale_kernel.cli', 'weights', str(tmp_path/'w'), '--arch', 'resnet18'],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and one_line(r.stderr) and 'resnet18' in r.stderr and 'download' in r.stderr, r.stderr

# --- where Kaggle runs it ---

def kaggle_venv() -> Path:
    "The cached Python 3.12 venv with Kaggle's versions (built once by tools/kaggle_venv.sh); skip when it cannot be built"
    try: r = subprocess.run(['bash', str(KAGGLE_VENV)], capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired: pytest.skip('building the Kaggle venv took over an hour')
    if r.returncode != 0: pytest.skip(f'cannot build the Kaggle venv: {r.stderr.strip()[-500:]}')
    return Path(r.stdout.strip().splitlines()[-1])

def test_bundle_runs_in_kaggle_versions(fake_kaggle, tmp_path):
    venv = kaggle_venv()
    probe = ("import importlib.util as u, torch, torchvision, timm, fastai, fastcore, sys\n"
             "print(sys.version_info[:2], *(m.__version__.split('+')[0] for m in (torch, torchvision, timm, fastai, fastcore)))\n"
             "print([m for m in ('whale_kernel', 'lapjv', 'lap', *LITE) if u.find_spec(m)])")
    r = subprocess.run([str(venv/'bin'/'python'), '-c', f'LITE = {list(LITE.values())}\n' + probe], capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.split('\n')[:2] == ["(3, 12) 2.10.0 0.25.0 1.0.26 2.8.7 1.12.42", '[]'], r.stdout + r.stderr[-2000:]
    ipy = tmp_path/'ipython'/'profile_default'/'startup'; ipy.mkdir(parents=True)
    (ipy/'00-nonet.py').write_text(NONET)                             # runs in the kernel only, not in nbconvert
    working, nonet = tmp_path/'working', tmp_path/'nonet.log'
    env = {k:v for k,v in os.environ.items() if not k.startswith(('WHALE_', 'PYTHON', 'JUPYTER', 'VIRTUAL_ENV', 'MPLBACKEND'))}
    env |= dict(PATH=f'{venv/"bin"}:{env.get("PATH", "")}', IPYTHONDIR=str(tmp_path/'ipython'), JUPYTER_DATA_DIR=str(tmp_path/'jd'),
                WHALE_KAGGLE_INPUT=str(fake_kaggle.comp), WHALE_KAGGLE_WORKING=str(working), WHALE_RUN_DIR=str(tmp_path/'run'),
                WHALE_PRESET='cpu', WHALE_TIME_BUDGET_MIN='2', WHALE_NONET_LOG=str(nonet))
    out = tmp_path/'executed.ipynb'
    t0 = time.monotonic()
    r = subprocess.run([str(venv/'bin'/'jupyter'), 'nbconvert', '--execute', '--to', 'notebook', '--output', str(out),
                        '--ExecutePreprocessor.timeout=1200', str(root/CODE_FILE)], capture_output=True, text=True, env=env, cwd=tmp_path)
    secs = time.monotonic() - t0
    print(f'bundle ({(root/CODE_FILE).stat().st_size/1e3:.0f} kB) executed in the Kaggle venv in {secs:.0f}s')
    assert r.returncode == 0, r.stderr[-4000:]
    nb = json.loads(out.read_text())
    assert nb['metadata']['language_info']['version'].startswith('3.12')
    pkg_out = ''.join(''.join(o.get('text', [])) for o in nb['cells'][1]['outputs'])
    assert 'whale_kernel 0' in pkg_out and str(root) not in pkg_out
    sub = pd.read_csv(working/'submission.csv')
    test = pd.read_csv(fake_kaggle.comp/'sample_submission.csv')
    assert list(sub.columns) == ['Image', 'Id'] and sorted(sub.Image) == sorted(test.Image)
    assert sub.Id.str.split().map(len).between(1, 5).all()
    assert (working/'report.png').is_file() and not (working/'cache').exists()
    assert not nonet.exists(), nonet.read_text()[-3000:]
    from whale_kernel.metrics import score_submission
    assert score_submission(working/'submission.csv', fake_kaggle.solution) > 0

def test_bundle_without_weights_stops_in_kaggle_versions(fake_kaggle, tmp_path):
    "In Kaggle's versions, under Jupyter as Kaggle runs it: no weights dataset, so the data cell stops with one line, within a minute"
    venv = kaggle_venv()
    bare = tmp_path/'input'; bare.mkdir(); (bare/COMPETITION).symlink_to(fake_kaggle.comp, target_is_directory=True)
    env = {k:v for k,v in os.environ.items() if not k.startswith(('WHALE_', 'PYTHON', 'JUPYTER', 'VIRTUAL_ENV', 'MPLBACKEND'))}
    env |= dict(PATH=f'{venv/"bin"}:{env.get("PATH", "")}', JUPYTER_DATA_DIR=str(tmp_path/'jd'), WHALE_KAGGLE_INPUT=str(bare/COMPETITION),
                WHALE_KAGGLE_WORKING=str(tmp_path/'working'), WHALE_RUN_DIR=str(tmp_path/'run'), WHALE_PRESET='kaggle')
    out = tmp_path/'executed.ipynb'; t0 = time.monotonic()
    r = subprocess.run([str(venv/'bin'/'jupyter'), 'nbconvert', '--execute', '--to', 'notebook', '--output', str(out),
                        '--ExecutePreprocessor.timeout=600', str(root/CODE_FILE)], capture_output=True, text=True, env=env, cwd=tmp_path)
    secs = time.monotonic() - t0
    assert r.returncode != 0 and secs < 60, (secs, r.stderr[-3000:])
    shown = r.stderr.rsplit('------------------', 1)[-1].strip()         # what the failing cell shows, after nbconvert's own report
    assert shown.startswith('WeightsError: no efficientnet_lite2.pth under') and '\n' not in shown, r.stderr[-3000:]
    assert not (tmp_path/'run').exists()

# --- the kernel as Kaggle runs it: boxes and weights from their own folders, an answer kept from the first model on -----

def _kernel_env(fake_kaggle, tmp_path, **kw) -> dict:
    env = {k:v for k,v in os.environ.items() if not k.startswith('WHALE_')}
    return env | dict(WHALE_KAGGLE_INPUT=str(fake_kaggle.comp), WHALE_KAGGLE_WORKING=str(tmp_path/'working'), WHALE_RUN_DIR=str(tmp_path/'run'),
                      MPLBACKEND='Agg', OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore') | kw

def test_bundle_keeps_its_first_answer_when_killed(fake_kaggle, tmp_path):
    "The committed bundle on a fake /kaggle/input: it finds the competition, the weights dataset and the boxes notebook's output, crops with the boxes, and `submission.csv` is in the working dir after the first model, so a kill then still leaves it"
    import signal
    nb = json.loads((root/CODE_FILE).read_text())
    (tmp_path/'kernel.py').write_text(NONET + nb_script(nb))
    env = _kernel_env(fake_kaggle, tmp_path, WHALE_PRESET='cpu', WHALE_MODELS='knn,arcface,siamese', WHALE_NONET_LOG=str(tmp_path/'nonet.log'))
    sub = tmp_path/'working'/'submission.csv'
    with open(tmp_path/'kernel.log', 'w') as f:
        p = subprocess.Popen([sys.executable, str(tmp_path/'kernel.py')], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        t0 = time.monotonic()
        while not sub.exists() and p.poll() is None and time.monotonic() - t0 < 600: time.sleep(0.05)
        p.send_signal(signal.SIGKILL); p.wait()
    log = (tmp_path/'kernel.log').read_text()
    assert p.returncode == -signal.SIGKILL, log[-3000:]                              # killed mid-run, after the kNN
    assert f'weights: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 from {fake_kaggle.weights}' in log
    n_tr, n_te = len(pd.read_csv(fake_kaggle.comp/'train.csv')), len(pd.read_csv(fake_kaggle.comp/'sample_submission.csv'))
    assert f'boxes from {fake_kaggle.boxes}: {n_tr} of {n_tr} train and {n_te} of {n_te} test photos' in log
    assert len(check_sub(sub, fake_kaggle.comp)) == n_te and not list(sub.parent.glob('.*.tmp'))
    assert not (tmp_path/'nonet.log').exists()

def test_bundle_without_weights_stops_at_once(fake_kaggle, tmp_path):
    "The `kaggle` preset on a /kaggle/input without the weights dataset (and no offline packages, as on Kaggle): one line, before any photo"
    bare = tmp_path/'input'; bare.mkdir()
    (bare/COMPETITION).symlink_to(fake_kaggle.comp, target_is_directory=True)
    nb = json.loads((root/CODE_FILE).read_text())
    hide = ''.join(f'sys.modules[{m!r}] = None\n' for m in LITE.values())               # Kaggle's image has none of them
    (tmp_path/'kernel.py').write_text('import sys\n' + hide + nb_script(nb))
    env = _kernel_env(fake_kaggle, tmp_path, WHALE_KAGGLE_INPUT=str(bare/COMPETITION), WHALE_PRESET='kaggle')
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(tmp_path/'kernel.py')], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    secs = time.monotonic() - t0
    assert r.returncode != 0 and secs < 60, (secs, r.stderr[-2000:])
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('whale_kernel.backbone.WeightsError: no efficientnet_lite2.pth under') and RANDOM_INIT in last, last
    assert not (tmp_path/'run').exists() and not (tmp_path/'working').exists()     # nothing cached, nothing trained
