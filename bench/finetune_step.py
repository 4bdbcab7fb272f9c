"""Where an ArcFace fine-tune step spends its time on this machine: loading and augmenting the batch, the forward pass,
the backward pass, the optimizer step, for each share of the backbone thawed (`arcface_unfreeze`) and each precision.

    python bench/finetune_step.py [--shares all,late,0.333] [--epochs 1] [--n-whales 220]

The learner is the `cpu` preset's fine-tune as `fit_arcface` builds it (`arcface_learner` on `array_dls` with the
preset's augmentations, `FlipClasses`, dynamic margins, the backbone's layer groups below the thawed share frozen,
`train_bn=False`), on the synthetic default's photos (the README's run: 220 whales, 128x272 at the `cpu` preset's
pixel budget). With `--trunk-views`, the shares below 'all' are also timed as `fit_arcface` trains them with
`arcface_trunk_views`: the frozen trunk's outputs cached once (its seconds are reported), the top on them. Each setting trains `--epochs` epochs after one warm-up epoch; a callback stamps the time at fastai's
batch events. Variants run one after another in one process, so their ratios are comparable; absolute times move with
the machine's load. Writes bench/results/finetune_step.json.
"""
import argparse, sys, time
import numpy as np, pandas as pd, torch
from fastai.callback.core import Callback
from _util import meta, write, synth_data, train_cache

class Stamps(Callback):
    "Seconds per batch in the loader (with the batch transforms), forward (with the loss), backward, optimizer"
    order = 99
    def before_fit(self): self.parts = dict(data=[], forward=[], backward=[], step=[]); self.t = None
    def before_epoch(self): self.t = time.perf_counter()
    def before_batch(self):
        if self.training: self.parts['data'].append(time.perf_counter() - self.t)
        self.t = time.perf_counter()
    def after_loss(self):
        if self.training: self.parts['forward'].append(time.perf_counter() - self.t); self.t = time.perf_counter()
    def after_backward(self): self.parts['backward'].append(time.perf_counter() - self.t); self.t = time.perf_counter()
    def after_step(self): self.parts['step'].append(time.perf_counter() - self.t)
    def after_batch(self): self.t = time.perf_counter()

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--shares', default='all,late,0.333', help="arcface_unfreeze values: 'all', 'late' or shares")
    ap.add_argument('--precisions', default='bf16,fp32', help='bf16: the learner as it ships on a CPU with bf16; fp32')
    ap.add_argument('--trunk-views', type=int, default=8,
                    help="also time the top share's steps on the cached trunk's outputs, this many views (0: not)")
    ap.add_argument('--epochs', type=int, default=1); ap.add_argument('--n-whales', type=int, default=220)
    a = ap.parse_args(argv)
    from whale_kernel.core import get_preset
    from whale_kernel.data import NEW_WHALE, array_dls, preset_aug
    from whale_kernel.arcface import (arcface_model, arcface_learner, dynamic_margins, oversample, thaw_share, _thaw,
                                      trunk_cut, TopNet, _trunk_dls)
    from whale_kernel.train import _set_freeze
    from whale_kernel.pipeline import quiet_bars
    p = get_preset('cpu')
    data = synth_data(n_whales=a.n_whales, seed=42)
    imgs, ids, _ = train_cache(data, (128, 272))
    ids = np.asarray(ids, dtype=object); known = np.flatnonzero(ids != NEW_WHALE)
    vocab = sorted(set(ids[known])); rows = oversample(known, ids, p.min_per_id)
    va = known[::15]
    dls = array_dls(imgs, ids, rows, va, vocab=vocab, bs=p.bs, device='cpu', aug_kw=preset_aug(p))
    margins = dynamic_margins(pd.Series(ids[known]).value_counts()[vocab].values).repeat(2)
    shares = [s if s in ('all', 'late') else float(s) for s in a.shares.split(',')]
    res = []
    runs = [(prec, u, False) for prec in a.precisions.split(',') for u in shares]
    runs += [(prec, u, True) for prec in a.precisions.split(',') for u in shares if a.trunk_views and thaw_share(u) < 1]
    for prec, u, trunk in runs:
        torch.manual_seed(0)
        model = arcface_model(p.arch, p.weights, len(vocab), p.emb_dim, p.arcface_k, pool='gem')
        cache_s = None
        if trunk:                  # as `fit_arcface` does it: the trunk's views once, then the top on them
            cut = trunk_cut(model, thaw_share(u)); pos = {o:i for i,o in enumerate(vocab)}
            t = time.perf_counter()
            tdls, _ = _trunk_dls(model, cut, imgs, known, va, rows, np.array([pos.get(o, -1) for o in ids]), len(vocab),
                                 a.trunk_views, preset_aug(p), p.seed, p.bs, 'cpu')
            cache_s = round(time.perf_counter() - t, 2)
            net, fl = TopNet(model, cut), 0
        else: tdls, net, fl = dls, model, len(vocab)
        learn = arcface_learner(tdls, net, s=p.arcface_s, m=p.arcface_m, margins=margins, flip_ids=fl,
                                mixed_precision=prec == 'bf16', thaw=thaw_share(u))
        _set_freeze(learn, _thaw(get_preset('cpu', arcface_unfreeze=u))['freeze'])
        st = Stamps(); learn.add_cb(st)
        with quiet_bars(True):
            learn.fit(1, 1e-4)                               # warm-up: allocator, first-call costs
            t = time.perf_counter(); learn.fit(a.epochs, 1e-4); secs = time.perf_counter() - t
        ms = {k: round(1000*float(np.median(v)), 1) for k,v in st.parts.items()}
        n = len(st.parts['step'])
        row = dict(unfreeze=u, share=thaw_share(u), precision=prec, trunk_views=a.trunk_views if trunk else 0,
                   trunk_cache_s=cache_s, steps=n, bs=p.bs,
                   trainable=sum(q.numel() for q in model.parameters() if q.requires_grad),
                   secs_per_epoch=round(secs/a.epochs, 2), ms_per_step=round(1000*secs/n, 1), median_ms=ms)
        res.append(row); print(row, flush=True)
    base = next((r['ms_per_step'] for r in res if r['unfreeze'] == 'late' and r['precision'] == 'bf16'
                 and not r['trunk_views']), None)
    for r in res: r['vs_late_bf16'] = base and round(r['ms_per_step']/base, 3)
    write('finetune_step', {**meta(), 'command': ' '.join(['python bench/finetune_step.py', *(sys.argv[1:] if argv is None else argv)]),
                            'data': str(data), 'size': [128, 272], 'rows': len(rows), 'runs': res})

if __name__ == '__main__': main()
