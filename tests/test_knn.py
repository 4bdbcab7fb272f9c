"The frozen-feature kNN (`whale_kernel.knn`): flip-TTA features, view-averaged cosine, retrieval on toy whales, the cache"
import numpy as np, pytest, torch, torch.nn.functional as F
from whale_kernel.knn import KNN, fit_knn, knn_features, knn_similarity
from whale_kernel.core import get_preset
from whale_kernel.train import retrieval_aps, frozen_size
from test_utils import toy_whales, tiny_preset

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def toy(): return toy_whales(n_ids=6, per_id=3, n_new=2)

def test_features_are_plain_then_mirrored(toy, tmp_path):
    imgs, ids = toy
    m = fit_knn(imgs, ids, np.arange(len(ids)), preset=tiny_preset(), cache_dir=tmp_path)
    assert isinstance(m, KNN) and m.size is None and not m.backbone.training   # `frozen_res=None`: as cached
    c = m.backbone.num_features
    f, f1 = knn_features(m, imgs), knn_features(m, imgs, tta=False)
    assert f.shape == (len(imgs), 2*c) and f1.shape == (len(imgs), c)
    torch.testing.assert_close(f[:, :c], f1)
    fm = knn_features(KNN(m.backbone), imgs[:, :, ::-1].copy())                      # the mirrored photos, uncached
    torch.testing.assert_close(torch.cat([fm[:, c:], fm[:, :c]], 1), f, rtol=1e-4, atol=1e-4)
    assert len(list(tmp_path.glob('pooled_resnet10t-*.pt'))) == 2                      # cached per view, keyed by arch

def test_similarity_averages_the_views(toy):
    imgs, ids = toy
    m = fit_knn(imgs, ids, np.arange(len(ids)), preset=tiny_preset())
    f = knn_features(m, imgs); c = m.backbone.num_features
    cos = lambda a, b: (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).numpy()
    s = knn_similarity(m, f[:4], f)
    assert s.shape == (4, len(imgs)) and s.dtype == np.float32
    np.testing.assert_allclose(s, (cos(f[:4, :c], f[:, :c]) + cos(f[:4, c:], f[:, c:]))/2, atol=1e-5)
    np.testing.assert_allclose(knn_similarity(m, f[:4, :c], f[:, :c]), cos(f[:4, :c], f[:, :c]), atol=1e-5)

def test_retrieves_toy_whales(toy):
    "One photo of each whale against the others: the frozen ImageNet features find the right whale"
    imgs, ids = toy
    m = fit_knn(imgs, ids, np.arange(len(ids)), preset=tiny_preset(arch='efficientnet_lite0', weights='offline'))
    f = knn_features(m, imgs)
    q = np.arange(0, 18, 3); g = np.setdiff1d(np.arange(len(ids)), q)
    aps = retrieval_aps(knn_similarity(m, f[q], f[g]), ids[q], ids[g])
    rand = retrieval_aps(np.random.default_rng(0).random((len(q), len(g))), ids[q], ids[g])
    assert aps.mean() >= 0.9 > rand.mean() + 0.3

def test_cache_tells_weights_apart(toy, tmp_path):
    imgs, ids = toy
    rand = fit_knn(imgs, ids, np.arange(len(ids)), preset=tiny_preset(arch='efficientnet_lite0', weights=None), cache_dir=tmp_path)
    f_rand = knn_features(rand, imgs)
    real = fit_knn(imgs, ids, np.arange(len(ids)), preset=tiny_preset(arch='efficientnet_lite0', weights='offline'), cache_dir=tmp_path)
    assert not torch.allclose(knn_features(real, imgs), f_rand)
    torch.testing.assert_close(knn_features(real, imgs), knn_features(KNN(real.backbone), imgs))   # = uncached

def test_features_of_chosen_rows(tmp_path):
    "`idxs` picks rows, as the pipeline asks only for the gallery and validation photos"
    imgs, ids = toy_whales(n_ids=3, per_id=2, n_new=0)
    m = fit_knn(imgs, ids, np.arange(len(ids)), preset=tiny_preset(), cache_dir=tmp_path)
    torch.testing.assert_close(knn_features(m, imgs, idxs=[4, 1]), knn_features(m, imgs)[[4, 1]])
    assert knn_features(m, imgs, tta=False, idxs=np.array([0])).shape == (1, m.backbone.num_features)

def test_knn_res_native(toy, tmp_path):
    "`knn_res='native'`: photos scaled up to the side the backbone was pretrained at, aspect kept, never down (the default keeps the cache's size)"
    imgs, ids = toy
    m = fit_knn(imgs, ids, np.arange(len(ids)), preset=tiny_preset(knn_res='native'), cache_dir=tmp_path)
    side = m.backbone.pretrained_cfg['input_size'][-1]; s = side/np.sqrt(32*64)
    assert get_preset('cpu').knn_res is None and m.size == (round(32*s), round(64*s))
    assert frozen_size(m.backbone, (2*side, 4*side)) is None and frozen_size(m.backbone, (32, 64), None) is None
    f = knn_features(m, imgs)
    assert f.shape == (len(imgs), 2*m.backbone.num_features)
    torch.testing.assert_close(f, knn_features(KNN(m.backbone, m.size), imgs))                   # the cache holds that size's features
    assert not torch.allclose(f, knn_features(KNN(m.backbone), imgs), atol=1e-3)                 # and they are not the cache size's
    assert len(list(tmp_path.glob('pooled_resnet10t-*.pt'))) == 2
    with pytest.raises(ValueError, match='knn_res'): get_preset('cpu', knn_res='big')
    with pytest.raises(ValueError, match='frozen_res'): get_preset('cpu', frozen_res=2)
