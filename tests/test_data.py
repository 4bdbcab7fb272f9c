"Bad competition inputs get a clear error naming the file (and line), or a logged skip; photos load; input size and augmentation."
import logging, shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from fastai.vision.core import TensorImage
from fastai.data.transforms import IntToFloatTensor, Normalize
from whale_kernel.data import (read_competition, read_bboxes, load_image, safe_load, cache_images, merge_duplicates,
                               valid_split, array_dls, img_batches, auto_size, STATS, norm_tfm, RandomGray, RandomErase,
                               aug_tfms, BatchResize, preset_aug, CompetitionError, NEW_WHALE, _write_tiny)
from test_utils import toy_whales, write_photos

torch.set_num_threads(1)

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
    ('Image,Id\ntr0.jpg,w_a\ntr1.jpg,w\tb\n', "1 id(s) with whitespace, e.g. 'w\\tb' (line(s) 3)"),
])
def test_bad_train_csv(comp, csv, msg):
    (comp/'train.csv').write_text(csv)
    with pytest.raises(CompetitionError, match='train.csv') as e: read_competition(comp)
    assert msg in str(e.value)

def test_no_known_whale_to_learn(comp):
    "Issue 9: a header-only train.csv and an all-new_whale one name the file and say why, instead of IndexError/ValueError"
    (comp/'train.csv').write_text('Image,Id\n')
    with pytest.raises(CompetitionError, match=r'train\.csv: no rows below the header'): read_competition(comp)
    (comp/'train.csv').write_text('Image,Id\ntr0.jpg,new_whale\ntr1.jpg,new_whale\n')
    with pytest.raises(CompetitionError, match=r'train\.csv: all 2 rows are new_whale'): read_competition(comp)

def test_test_photo_listed_in_train(comp):
    shutil.copy(comp/'train'/'tr1.jpg', comp/'test'/'tr1.jpg')
    with pytest.raises(CompetitionError, match=r'train\.csv: 1 test photo name\(s\) also listed as train photos, e.g. tr1\.jpg'):
        read_competition(comp)

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

# --- input size ---------------------------------------------------------------------------------------------------------

def _frame(fns, boxes=None):
    b = np.full((len(fns), 4), np.nan) if boxes is None else np.asarray(boxes, float)
    return pd.DataFrame(dict(fn=[str(f) for f in fns], x0=b[:, 0], y0=b[:, 1], x1=b[:, 2], y1=b[:, 3]))

def test_auto_size(tmp_path):
    flukes = [(0, 0, 200, 100), (5, 5, 215, 110), (0, 0, 300, 140), (0, 0, 100, 100)]   # boxes, median aspect 2
    assert auto_size(_frame(['x.jpg']*4, flukes), 128*256) == (128, 256)
    write_photos(tmp_path, ['a.jpg', 'b.jpg', 'c.jpg'], size=(90, 90))                  # square photos, no boxes
    sq = _frame([tmp_path/n for n in ('a.jpg', 'b.jpg', 'c.jpg')])
    assert auto_size(sq, 160*160) == (160, 160) and auto_size(sq, 128*256) == (176, 176)
    h, w = auto_size(sq, 100*100, multiple=16)
    assert h == w and h % 16 == 0
    ex = Image.Exif(); ex[0x0112] = 6                                                   # EXIF-rotated: 60x120 shown as 120x60
    Image.fromarray(np.zeros((60, 120, 3), np.uint8)).save(tmp_path/'r.jpg', exif=ex)
    assert auto_size(_frame([tmp_path/'r.jpg']*3), 128*256) == (256, 128)
    assert auto_size(_frame(['none.jpg']), 64*64) == (64, 64)                              # unreadable: square
    assert auto_size(_frame(['x.jpg'], [(0, 0, 1000, 10)]), 128*256) == (96, 384)         # aspect clipped to 4

# --- augmentation and normalisation ------------------------------------------------------------------------------------

def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorImage(torch.rand(n, 3, 24, 40, generator=g))

def test_random_gray():
    x = _batch()
    g = RandomGray(p=1.)(x, split_idx=0)
    torch.testing.assert_close(g[:, 0], g[:, 1]); torch.testing.assert_close(g[:, 0], g[:, 2])
    torch.testing.assert_close(g[:, 0], .299*x[:, 0] + .587*x[:, 1] + .114*x[:, 2])
    assert torch.equal(RandomGray(p=0.)(x, split_idx=0), x)
    assert torch.equal(RandomGray(p=1.)(x, split_idx=1), x)                              # validation: untouched
    torch.manual_seed(0)
    gray = (RandomGray(p=.5)(_batch(400), split_idx=0).std(1) < 1e-6).all(-1).all(-1)
    assert 150 < gray.sum() < 250

def test_random_erase():
    x = _batch(64) + 1                                                                    # no zeros before
    torch.manual_seed(0)
    e = RandomErase(p=1., sl=.05, sh=.2)(x, split_idx=0)
    z = e == 0
    assert torch.equal(e[~z], x[~z]) and (z.all(1) == z.any(1)).all()                     # whole pixels, all channels
    frac = z[:, 0].float().mean((1, 2))
    assert (frac > 0).all() and (frac < .3).all()
    for m in z[:, 0]:                                                                     # one rectangle
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert m[ys.min():ys.max()+1, xs.min():xs.max()+1].all()
    assert torch.equal(RandomErase(p=0.)(x, split_idx=0), x) and torch.equal(RandomErase(p=1.)(x, split_idx=1), x)

def test_aug_tfms_and_stats():
    names = lambda fs: [type(f).__name__ for f in fs]
    assert names(aug_tfms(False)) == ['IntToFloatTensor', 'Normalize']
    assert names(aug_tfms(False, size=(8, 16))) == ['IntToFloatTensor', 'BatchResize', 'Normalize']
    full = names(aug_tfms(True, p_gray=.2, p_erase=.25))
    assert full[0] == 'IntToFloatTensor' and full[-2:] == ['Normalize', 'RandomErase'] and 'RandomGray' in full
    assert 'Flip' not in full and not any('Flip' in n for n in full)                     # flips only as flip classes
    assert 'RandomGray' not in names(aug_tfms(True, p_gray=0)) and 'RandomErase' not in names(aug_tfms(True, p_erase=0))
    n = norm_tfm()
    torch.testing.assert_close(n.mean.flatten().cpu(), torch.tensor(STATS[0])); torch.testing.assert_close(n.std.flatten().cpu(), torch.tensor(STATS[1]))
    from whale_kernel.core import get_preset
    import inspect
    kw = preset_aug(get_preset('cpu', p_gray=.7))
    assert kw['p_gray'] == .7 and set(kw) <= set(inspect.signature(aug_tfms).parameters)

def test_loaders_normalise_like_the_feature_loop():
    imgs, ids = toy_whales(2, 3, 0)
    dls = array_dls(imgs, ids, [0, 1], [2, 3, 4], vocab=['w0', 'w1'], bs=3, aug=False, device='cpu')
    xb, yb = dls.valid.one_batch()
    torch.testing.assert_close(xb.as_subclass(torch.Tensor), next(img_batches(imgs, [2, 3, 4], bs=3)))
    dls = array_dls(imgs, ids, np.arange(6), None, bs=6, device='cpu', aug_kw=dict(p_gray=1., p_erase=0., max_lighting=0.))
    xb, _ = dls.train.one_batch()
    std, mean = torch.tensor(STATS[1]).view(1, 3, 1, 1), torch.tensor(STATS[0]).view(1, 3, 1, 1)
    raw = xb.as_subclass(torch.Tensor)*std + mean                                            # undo the normalisation
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-5, rtol=0)                       # every train photo gray

def test_batch_resize():
    x = _batch(2)
    assert BatchResize((12, 20))(x).shape == (2, 3, 12, 20) and BatchResize((24, 40))(x) is x

def test_equalize(tmp_path):
    a = (np.linspace(100, 140, 64*64).reshape(64, 64, 1).repeat(3, 2)).astype(np.uint8)     # low contrast
    Image.fromarray(a).save(tmp_path/'low.png')
    plain, eq = (np.asarray(load_image(tmp_path/'low.png', size=(32, 32), equalize=e)) for e in (False, True))
    assert np.ptp(plain) < 45 and np.ptp(eq) > 200

# --- real photos (beside the checkout; skipped in a fresh clone) -------------------------------------------------------

def test_real_photo_fixtures_skip_when_shared_is_absent(tmp_path, monkeypatch, request):
    import conftest
    monkeypatch.setattr(conftest, 'REAL', tmp_path/'none'); monkeypatch.setattr(conftest, 'DOGS', tmp_path/'none')
    for f in ('real_samples', 'dogfaces'):
        with pytest.raises(pytest.skip.Exception, match='not present'): request.getfixturevalue(f)

def test_dogfaces_reads_square(dogfaces):
    c = read_competition(dogfaces)
    assert len(c.ids) == 225 and len(c.test) == 518
    assert auto_size(c.train.iloc[::25], 160*160) == (160, 160)                          # faces: square
    arr, ok = cache_images(c.train.iloc[:6], size=(64, 64), workers=1)
    assert ok.all() and arr.shape == (6, 64, 64, 3) and arr.std() > 20

def test_real_samples_load(real_samples):
    for d in sorted(p for p in real_samples.iterdir() if p.is_dir()):
        df = pd.read_csv(d/'train.csv')
        for im in df.Image:
            x = load_image(d/'train'/im, size=(64,128))
            assert x.size == (128,64) and x.mode == 'RGB'

# --- boxes from anywhere, checked against the photos; a cache that streams (issue 24) ------------------------------------

def test_boxes_file_outside_the_competition_checked_against_the_photos(comp, tmp_path, wklog):
    "Boxes from a CSV of their own (on Kaggle: another notebook's output): strays and boxes mostly outside their photo are counted and dropped"
    bx = tmp_path/'boxes'/'bounding_boxes.csv'; bx.parent.mkdir()
    bx.write_text('Image,x0,y0,x1,y1\n'                     # the photos are 120x60
                  'tr0.jpg,10,5,100,50\n'                   # inside
                  'tr1.jpg,100,5,200,50\n'                  # 20 of its 100 columns inside: dropped
                  'tr2.jpg,60,5,130,50\n'                   # 60 of 70 inside: kept (the loader clips it)
                  'te0.jpg,0,0,120,60\n'
                  'gone.jpg,1,1,5,5\nalso_gone.jpg,1,1,5,5\n')
    c = read_competition(comp, bbox_csv=bx)
    assert c.train.x0.notna().tolist() == [True, False, True, False, False, False] and c.test.x0.notna().tolist() == [True, False, False]
    assert f'{bx}: 2 box(es) name no train or test photo, e.g. also_gone.jpg' in wklog.text
    assert f'{bx}: 1 box(es) lie mostly outside their photo, e.g. tr1.jpg' in wklog.text
    assert f'boxes from {bx}: 2 of 6 train and 1 of 3 test photos' in wklog.text
    wklog.clear(); read_competition(comp)
    assert 'no bounding_boxes.csv, so the models see whole photos' in wklog.text and 'generating-whale-bounding-boxes' in wklog.text

def test_cache_streams_to_disk_as_photos_decode(comp, tmp_path, monkeypatch):
    "The cache file grows batch by batch while photos are still being decoded (no full copy in memory), and reads back equal"
    import whale_kernel.data as D
    real, seen = D._load_row, []
    def spy(r, *a, **k):
        seen.append(sum(f.stat().st_size for f in (tmp_path/'c').glob('*.tmp.npy')))   # bytes on disk when this photo decodes
        return real(r, *a, **k)
    monkeypatch.setattr(D, '_load_row', spy)
    df = read_competition(comp).train
    arr, ok = cache_images(df, (16, 32), tmp_path/'c', workers=1, chunk=2)
    assert isinstance(arr, np.memmap) and ok.all() and not list((tmp_path/'c').glob('*.tmp*'))
    hdr = seen[0]; batch = 2*16*32*3
    assert seen[:2] == [hdr]*2 and seen[2:4] == [hdr + batch]*2 and seen[4:] == [hdr + 2*batch]*2
    mem, _ = cache_images(df, (16, 32), None)
    np.testing.assert_array_equal(np.asarray(arr), mem)
