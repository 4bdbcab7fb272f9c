"The offline ImageNet weight mapping is checked by shapes and by one real photo; bad weight files get clear errors."
import numpy as np, pytest, torch, timm
from PIL import Image
from whale_kernel.backbone import (create_backbone, load_by_position, offline_weights_path, _read_sd, embed,
                                   reduce_by_id, cosine_sim)
from whale_kernel.data import img_batches

def test_offline_weights_map_by_position_with_matching_shapes():
    sd = _read_sd(offline_weights_path())
    tgt = timm.create_model('efficientnet_lite0', pretrained=False).state_dict()
    assert len(sd) == len(tgt) == 296
    assert all(a.shape == b.shape for a,b in zip(sd.values(), tgt.values()))
    m = create_backbone(num_classes=None)
    assert torch.equal(m.conv_stem.weight, sd['_conv_stem.weight']) and torch.equal(m.classifier.bias, sd['_fc.bias'])

def test_offline_weights_classify_a_real_photo():
    skdata = pytest.importorskip('skimage.data')
    m = create_backbone(num_classes=None).eval()
    x = np.asarray(Image.fromarray(skdata.coffee()).resize((224,224)))[None]
    with torch.no_grad(): p = m(next(img_batches(x, bs=1))).softmax(1)[0]
    assert int(p.argmax()) == 967 and p.max() > 0.7          # ImageNet 967: espresso

def test_bad_weights(tmp_path):
    with pytest.raises(ValueError, match='only for efficientnet_lite0'): create_backbone('resnet18', weights='offline')
    with pytest.raises(FileNotFoundError, match='missing.pth'): create_backbone('resnet18', weights=tmp_path/'missing.pth')
    with pytest.raises(ValueError, match='does not fit'):
        a = timm.create_model('resnet18').state_dict(); b = timm.create_model('resnet18', num_classes=10)
        load_by_position(b, a)

def test_local_state_dict_by_name(tmp_path):
    src = timm.create_model('resnet18', num_classes=0)
    torch.save({'state_dict': {f'module.{k}':v for k,v in src.state_dict().items()}}, tmp_path/'w.pth')
    m = create_backbone('resnet18', weights=tmp_path/'w.pth', num_classes=0)
    assert torch.equal(m.conv1.weight, src.conv1.weight)

def test_embed_tta_and_reduce():
    m = create_backbone('resnet18', weights=None)
    imgs = np.random.default_rng(0).integers(0, 255, (3, 32, 64, 3), dtype=np.uint8)
    f, ft = embed(m, imgs, bs=2), embed(m, imgs, bs=2, tta=True)
    fm = embed(m, imgs[:, :, ::-1].copy(), bs=2)
    assert f.shape == (3, 512) and torch.allclose(ft, (f+fm)/2, atol=1e-4)
    s, ids = reduce_by_id(cosine_sim(f, f), ['w_b','new_whale','w_b'])
    assert ids == ['w_b'] and s.shape == (3,1) and np.isclose(s[0,0], 1, atol=1e-5)
