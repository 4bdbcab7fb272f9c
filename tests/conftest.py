import os
from pathlib import Path
import pytest

SHARED = Path(__file__).resolve().parents[1].parent/'shared'
REAL = SHARED/'data'/'real_samples'

@pytest.fixture
def real_samples():
    "The real photo samples beside the checkout; skip when `../shared` is absent (a user's fresh clone)"
    if not REAL.is_dir(): pytest.skip(f'{REAL} not present')
    return REAL

@pytest.fixture
def wklog(caplog):
    "Capture the `whale_kernel` logger (it does not propagate to the root logger)"
    import logging
    lg = logging.getLogger('whale_kernel'); lg.addHandler(caplog.handler)
    yield caplog
    lg.removeHandler(caplog.handler)
