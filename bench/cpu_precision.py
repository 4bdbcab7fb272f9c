"""CPU: convolution layout and precision for the `cpu` preset's backbone. Inference (the feature passes) and a training
step (forward + backward, the ArcFace fine-tune) of efficientnet_lite0 at 128×272 in NCHW fp32, NHWC fp32 and NHWC
bf16 autocast, interleaved over `--rounds`, best of each; inference also NHWC fp32 with BatchNorm folded into the
convolutions (`fold_bn`, what the CPU feature passes run; no training step there). bf16 only pays on
a CPU with native bf16 (`cpu_bf16`: AVX512-BF16 or AMX); elsewhere it is emulated, and the learners stay in fp32 there.

    python bench/cpu_precision.py [--quick] [--rounds 3] [--threads 2]"""
import argparse, time
import torch
from _util import meta, write, cpu_threads

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--quick', action='store_true', help='small input and batch (a smoke test)')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--threads', type=int, default=2, help='torch threads (the pipeline uses every core)')
    a = ap.parse_args()
    cpu_threads(a.threads)
    from whale_kernel.backbone import create_backbone
    from whale_kernel.train import cpu_bf16, fold_bn
    size, bi, bt, reps = ((32, 64), 8, 4, 2) if a.quick else ((128, 272), 64, 32, 3)
    arch = 'efficientnet_lite0'
    m = create_backbone(arch, weights=None)
    modes = {'nchw_fp32': (torch.contiguous_format, False), 'nhwc_fp32': (torch.channels_last, False),
             'nhwc_bf16': (torch.channels_last, True), 'nhwc_fp32_folded': (torch.channels_last, False)}
    def infer(fmt, bf, folded=False):
        x = torch.randn(bi, 3, *size).contiguous(memory_format=fmt); m.eval()
        with torch.no_grad(), fold_bn(m, on=folded), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf):
            m.forward_features(x); t = time.perf_counter()
            for _ in range(reps): m.forward_features(x)
            return reps*bi / (time.perf_counter() - t)
    def step(fmt, bf):
        mm = m.to(memory_format=fmt); mm.train()
        x = torch.randn(bt, 3, *size).contiguous(memory_format=fmt)
        def one():
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf): y = mm.forward_features(x).float().mean((2, 3)).pow(2).sum()
            y.backward(); mm.zero_grad()
        one(); t = time.perf_counter()
        for _ in range(reps): one()
        return reps*bt / (time.perf_counter() - t)
    best = {k: dict(infer=0., train=0.) for k in modes}
    for _ in range(a.rounds):
        for k,(fmt,bf) in modes.items():
            best[k]['infer'] = max(best[k]['infer'], infer(fmt, bf, k.endswith('folded')))
            if not k.endswith('folded'): best[k]['train'] = max(best[k]['train'], step(fmt, bf))
        m.to(memory_format=torch.contiguous_format)
    base = best['nchw_fp32']
    res = meta(arch=arch, size=list(size), infer_bs=bi, train_bs=bt, rounds=a.rounds, quick=a.quick, cpu_bf16=cpu_bf16(),
               infer_img_s={k: round(v['infer'], 1) for k,v in best.items()},
               train_img_s={k: round(v['train'], 1) for k,v in best.items() if v['train']},
               infer_speedup={k: round(v['infer']/base['infer'], 2) for k,v in best.items()},
               train_speedup={k: round(v['train']/base['train'], 2) for k,v in best.items() if v['train']})
    print(write('cpu_precision', res))
    for k in modes:
        tr = f"  train {res['train_img_s'][k]:6.1f} img/s ({res['train_speedup'][k]}×)" if k in res['train_img_s'] else ''
        print(f"{k:16s} infer {res['infer_img_s'][k]:7.1f} img/s ({res['infer_speedup'][k]}×){tr}")

if __name__ == '__main__': main()
