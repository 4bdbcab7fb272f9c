"Bad competition inputs get a clear error naming the file (and line), or a logged skip; real photos load."
import logging, shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image
from whale_kernel.data import (read_competition, read_bboxes, load_image, safe_load, cache_images, merge_duplicates,
                               valid_split, array_dls, CompetitionError, NEW_WHALE, _write_tiny)

@pytest.fixture
def comp(tmp_path): return _write_tiny(tmp_path/'comp')

def test_happy_path(comp):
    c = read_competition(comp)
    assert c.ids == ['w_a','w_b','w_c'] and len(c.test) == 3 and c.train.fn.map(lambda f: Path(f).exists()).all()

@pytest.mark.parametrize('csv,msg', [
    ('Image\ntr0.jpg\n', "missing ['Id']"),
    ('Image,Id,Extra\ntr0.jpg,w_a,1\n', "extra ['Extra']"),
    ('Image,Id\ntr0.jpg,\n', 'line(s) 2'),
    ('Image,Id\ntr0.jpg,w_a\ntr0.jpg,w_b\n', 'different ids on lines 2, 3'),
    ('Image,Id\ntr0.jpg,w_a\nnope.jpg,w_b\n', 'nope.jpg (line(s) 3)'),
])
def test_bad_train_csv(comp, csv, msg):
    (comp/'train.csv').write_text(csv)
    with pytest.raises(CompetitionError, match='train.csv') as e: read_competition(comp)
    assert msg in str(e.value)

def test_missing_files_and_dirs(comp, tmp_path):
    with pytest.raises(CompetitionError, match='competition dir not found'): read_competition(tmp_path/'nope')
    (comp/'train.csv').unlink()
    with pytest.raises(CompetitionError, match=r'train\.csv: file not found'): read_competition(comp)

def test_empty_or_missing_test_dir(comp):
    for f in (comp/'test').iterdir(): f.unlink()
    with pytest.raises(CompetitionError, match='empty test dir'): read_competition(comp)
    shutil.rmtree(comp/'test')
    with pytest.raises(CompetitionError, match='test dir not found'): read_competition(comp)

def test_repeated_row_is_logged_skip(comp, wklog):
    (comp/'train.csv').write_text('Image,Id\ntr0.jpg,w_a\ntr0.jpg,w_a\ntr1.jpg,w_b\n')
    c = read_competition(comp)
    assert c.train.Image.tolist() == ['tr0.jpg','tr1.jpg'] and 'dropped 1 repeated row(s) on line(s) 3' in wklog.text

def test_sample_submission_lists_missing_test_image(comp):
    (comp/'sample_submission.csv').write_text('Image,Id\nte0.jpg,new_whale\nghost.jpg,new_whale\n')
    with pytest.raises(CompetitionError, match=r'sample_submission\.csv.*ghost\.jpg'): read_competition(comp)

def test_unlisted_train_file_is_logged(comp, wklog):
    shutil.copy(comp/'train'/'tr0.jpg', comp/'train'/'extra.jpg')
    read_competition(comp); assert 'not listed in train.csv' in wklog.text

def test_bbox_csv(comp, wklog):
    (comp/'bounding_boxes.csv').write_text('Image,x0,y0,x1,y1\ntr0.jpg,1,2,50,40\ntr1.jpg,30,2,10,40\n')
    c = read_competition(comp)
    assert c.train.x1.iloc[0] == 50 and np.isnan(c.train.x0.iloc[1]) and 'malformed box' in wklog.text
    (comp/'bounding_boxes.csv').write_text('Image,x,y\ntr0.jpg,1,2\n')
    with pytest.raises(CompetitionError, match=r'bounding_boxes\.csv: expected columns'): read_competition(comp)

def test_corrupt_and_truncated(tmp_path, wklog):
    noise = np.random.default_rng(0).integers(0, 255, (200, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path/'ok.jpg', quality=95)
    b = (tmp_path/'ok.jpg').read_bytes()
    (tmp_path/'trunc.jpg').write_bytes(b[:len(b)//2]); (tmp_path/'junk.jpg').write_bytes(b'\x00'*100)
    assert safe_load(tmp_path/'trunc.jpg', size=(32,64)).size == (64,32)
    assert 'truncated' in wklog.text and str(tmp_path/'trunc.jpg') in wklog.text
    assert safe_load(tmp_path/'junk.jpg') is None and 'junk.jpg: unreadable' in wklog.text

def test_cache_drops_unreadable(comp):
    (comp/'train'/'tr3.jpg').write_bytes(b'garbage')
    arr, ok = cache_images(read_competition(comp).train, size=(16,32))
    assert arr.shape == (6,16,32,3) and ok.tolist() == [True,True,True,False,True,True]

@pytest.mark.parametrize('mode,ext', [('RGB','JPG'), ('L','jpg'), ('CMYK','jpeg'), ('RGBA','png'), ('P','png'), ('LA','png')])
def test_modes_and_extensions(tmp_path, mode, ext):
    src = np.zeros((50,100,3), np.uint8); src[:, :50] = 255
    Image.fromarray(src).convert(mode).save(tmp_path/f'x.{ext}')
    im = load_image(tmp_path/f'x.{ext}', size=(20,40))
    assert im.mode == 'RGB' and im.size == (40,20)
    a = np.asarray(im).mean(axis=(0,2)); assert a[:15].mean() > 150 and a[25:].mean() < 60

def test_exif_orientation_and_bbox_crop(tmp_path):
    src = np.zeros((100,200,3), np.uint8); src[:, :100] = 255
    ex = Image.Exif(); ex[0x0112] = 6
    Image.fromarray(src).rotate(90, expand=True).save(tmp_path/'r.jpg', exif=ex)
    a = np.asarray(load_image(tmp_path/'r.jpg', size=(32,64))).mean(axis=(0,2))
    assert a[:28].mean() > 200 and a[36:].mean() < 60
    assert np.asarray(load_image(tmp_path/'r.jpg', bbox=(0,0,90,100), margin=0, size=(32,64))).mean() > 220

def test_draft_mode_matches_full_decode(tmp_path):
    rng = np.random.default_rng(1)
    big = np.kron(rng.integers(0,255,(35,70,3)), np.ones((20,20,1))).astype(np.uint8)  # 700x1400, smooth blocks
    Image.fromarray(big).save(tmp_path/'big.jpg', quality=95)
    fast = np.asarray(load_image(tmp_path/'big.jpg', size=(64,128))).astype(float)
    ref = np.asarray(Image.open(tmp_path/'big.jpg').resize((128,64), Image.BILINEAR)).astype(float)
    assert np.abs(fast-ref).mean() < 12

def test_merge_duplicates(comp):
    shutil.copy(comp/'train'/'tr0.jpg', comp/'train'/'tr2.jpg')
    m = merge_duplicates(read_competition(comp).train)
    assert 'tr2.jpg' not in m.Image.values and set(m.Id) == {'w_a', NEW_WHALE, 'w_c'}

def test_valid_split_mirrors_leaderboard():
    df = pd.DataFrame({'Id': [NEW_WHALE]*300 + [f'w_{i//2}' for i in range(400)] + [f's_{i}' for i in range(100)]})
    v = valid_split(df, frac=0.5, seed=3)
    assert abs((df.Id[v] == NEW_WHALE).mean() - 0.276) < 0.02
    assert df.Id[v & (df.Id != NEW_WHALE)].is_unique              # one photo per held-out whale
    assert not v[700:].any()                                         # single-photo whales are never held out
    held = set(df.Id[v]) - {NEW_WHALE}
    assert held <= set(df.Id[~v])                                    # held-out whales stay in the gallery
    assert (valid_split(df, seed=3) == v).all()

def test_real_samples_load(real_samples):
    for d in sorted(p for p in real_samples.iterdir() if p.is_dir()):
        df = pd.read_csv(d/'train.csv')
        for im in df.Image:
            x = load_image(d/'train'/im, size=(64,128))
            assert x.size == (128,64) and x.mode == 'RGB'
