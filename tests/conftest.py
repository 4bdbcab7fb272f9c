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
