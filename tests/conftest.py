import os
from pathlib import Path
import pytest

SHARED = Path(__file__).resolve().parents[1].parent/'shared'
REAL = SHARED/'data'/'real_samples'
DOGS = SHARED/'data'/'dogfaces'

@pytest.fixture
def real_samples():
    "The real photo samples beside the checkout; skip when `../shared` is absent (a user's fresh clone)"
    if not REAL.is_dir(): pytest.skip(f'{REAL} not present')
    return REAL

@pytest.fixture
def dogfaces():
    "The real dog-face competition beside the checkout; skip when `../shared` is absent (a user's fresh clone)"
    if not (DOGS/'train.csv').is_file(): pytest.skip(f'{DOGS} not present')
    return DOGS

@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    "A synthetic competition of 12 whales (about 40 train and 12 test photos, with `solution.csv`), made once per test run"
    from test_utils import tiny_comp
    return tiny_comp(tmp_path_factory.mktemp('tiny')/'data', n_whales=12, seed=0)

@pytest.fixture
def wklog(caplog):
    "Capture the `whale_kernel` logger (it does not propagate to the root logger)"
    import logging
    lg = logging.getLogger('whale_kernel'); lg.addHandler(caplog.handler)
    yield caplog
    lg.removeHandler(caplog.handler)
