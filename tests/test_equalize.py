"""Histogram equalisation as a choice (`equalize='auto'`): the kNN's validation keeps it when the photos of one animal
differ by their light, and leaves the photos as they are when they do not."""
import json
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch, torch.nn.functional as F
from PIL import Image
from whale_kernel.core import get_preset
from whale_kernel.data import NEW_WHALE
from whale_kernel.pipeline import run, choose_equalize

torch.set_num_threads(1)
H, W = 48, 96
# the photos' own size, so no resize blurs the grey levels; the kNN alone, on two pooled splits
KNN = dict(size=(H, W), knn_res=None, max_splits=2)
GAMMAS = (0.25, 1., 4.)            # three lights: each whale is photographed once under each

def _smooth(rng, cells=(4, 8)):
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    return F.interpolate(torch.rand(1, 1, *cells, generator=g), size=(H, W), mode='bicubic', align_corners=False)[0, 0].numpy()

def lit_comp(path, relight:bool, n_whales:int=12, seed:int=0) -> Path:
    """A competition of `n_whales` whales, three photos each, plus new_whale photos, as lossless grey PNGs. All whales
    share most of one pattern and differ in a fainter one of their own; with `relight` each photo of a whale is under
    another of `GAMMAS`, so two whales under one light look more alike than one whale under two lights, until
    equalisation maps each photo's grey levels onto the same even spread."""
    rng = np.random.default_rng(seed); path = Path(path)
    common = _smooth(rng, (3, 6))
    def photo(own, gamma):
        x = 0.75*common + 0.25*own; x = (x - x.min())/(x.max() - x.min())
        a = np.clip(255*(0.02 + 0.96*x**gamma) + rng.normal(0, 0.3, x.shape), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(a[..., None], 3, -1))
    rows = []
    for split in ('train', 'test'): (path/split).mkdir(parents=True, exist_ok=True)
    for w in range(n_whales):
        own = _smooth(rng)
        for k,g in enumerate(GAMMAS if relight else (1.,)*3):
            fn = f'w{w}_{k}.png'; photo(own, g).save(path/'train'/fn); rows.append((fn, f'w{w}'))
    for i in range(6):
        fn = f'nw{i}.png'; photo(_smooth(rng), GAMMAS[i % 3] if relight else 1.).save(path/'train'/fn); rows.append((fn, NEW_WHALE))
    for i in range(3): photo(_smooth(rng), 1.).save(path/'test'/f'te{i}.png')
    pd.DataFrame(rows, columns=['Image', 'Id']).to_csv(path/'train.csv', index=False)
    return path

@pytest.mark.parametrize('relight', [True, False])
def test_equalisation_is_kept_only_where_the_light_changes(relight, tmp_path, wklog):
    data = lit_comp(tmp_path/'data', relight)
    s = run(data, tmp_path/'out', models=['knn'], quiet=True, **KNN)
    line = next(l for l in wklog.text.splitlines() if 'histogram equalisation' in l)
    assert s['equalize'] is relight, line
    assert ('kept' in line and 'not kept' not in line) if relight else 'not kept' in line
    assert 'equalize' in s['stages'] and json.loads((tmp_path/'out'/'summary.json').read_text())['equalize'] is relight

def test_a_fixed_setting_is_not_tried(tmp_path, wklog):
    data = lit_comp(tmp_path/'data', True)
    s = run(data, tmp_path/'out', models=['knn'], quiet=True, equalize=False, **KNN)
    assert s['equalize'] is False and 'equalize' not in s['stages'] and 'histogram equalisation' not in wklog.text
    # and a settled preset passes through untouched, with nothing computed
    p = get_preset(equalize=True); ph = object()
    assert choose_equalize(ph, [], p) == (ph, p)

def test_equalize_must_be_a_known_setting():
    with pytest.raises(ValueError, match="Preset.equalize must be one of"): get_preset(equalize='clahe')
