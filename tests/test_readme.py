"README.md is generated from nbs/index.ipynb and gives exactly the two commands CI and users run."
import re, subprocess, sys
from pathlib import Path
root = Path(__file__).resolve().parents[1]

def test_readme_in_sync_with_index():
    r = subprocess.run([sys.executable, str(root/'tools'/'readme.py'), '--check'])
    assert r.returncode == 0, 'README.md is stale: run `python tools/readme.py`'

def test_two_commands():
    cmds = re.findall(r'```sh\n(.*?)\n```', (root/'README.md').read_text(), re.S)
    assert cmds == ['pip install -e . && whale-kernel run --out runs/demo',
                    'pip install -e ".[dev]" && nbdev_test && pytest tests']
    assert 'nbdev_test' in (root/'.ci'/'run').read_text() and 'pytest -q tests' in (root/'.ci'/'run').read_text()
