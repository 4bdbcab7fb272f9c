"""Write bench/README.md: the latest results of each benchmark (bench/results/*.json, and the GPU run's copied into
bench/results/gpu/) as tables, with how to rerun them.      python bench/report.py"""
import json
from pathlib import Path

B = Path(__file__).resolve().parent
RES = B/'results'

def load(name) -> list:
    "The results of bench `name` on each machine: CPU (results/) then GPU (results/gpu/)"
    return [json.loads(p.read_text()) for p in (RES/f'{name}.json', RES/'gpu'/f'{name}.json') if p.exists()]

def f(x, d=1, pct=False):
    if x is None or isinstance(x, str): return '–' if x is None else x
    return f'{100*x:.{d}f} %' if pct else f'{x:,.{d}f}'

def where(r): return f"{r['device']} ({r['date'][:10]}, torch {r['versions']['torch']})"

def sec_train(rs):
    L = ['## train_throughput: learners against the plain-loop ceiling', '',
         '`python bench/train_throughput.py [--quick] [--rounds 3]` (GPU: efficientnet_b0 @ 256×512, batch 64; `--quick`: 32×64, batch 8).', '',
         '| machine | config | ceiling img/s (ArcFace / Siamese / timm CE) | ArcFace learner img/s | ratio | tuned ratio | Siamese learner img/s | ratio | tuned ratio |',
         '|---|---|---|---|---|---|---|---|---|']
    for r in rs:
        c, a, s, ce = r['config'], r.get('arcface', {}), r.get('siamese', {}), r.get('ceiling_img_s', {})
        L.append(f"| {where(r)} | {c['arch']} @ {c['size'][0]}×{c['size'][1]}, bs {c['bs']}, {c['amp']} | {f(ce.get('arcface'))} / "
                 f"{f(ce.get('siamese'))} / {f(ce.get('timm_ce'))} | {f(a.get('learner_img_s'))} | {f(a.get('ratio'), 2)} | "
                 f"{f(a.get('tuned_ratio'), 2)} | {f(s.get('learner_img_s'))} | {f(s.get('ratio'), 2)} | {f(s.get('tuned_ratio'), 2)} |")
    for r in rs:
        for g in ('arcface', 'siamese'):
            v = r.get(g, {}).get('variants', {})
            if v: L += ['', f"{g} variants on {r['device']}: " + ', '.join(f"{k} {f(o.get('img_s'))} ({f(o.get('ratio'), 2)})" if 'img_s' in o
                                                                       else f"{k} {o.get('error', o.get('skipped', '?'))[:60]}" for k,o in v.items())]
    return L

def sec_loader(rs):
    L = ['## loader: decode and cached batches', '', '`python bench/loader.py [--quick] [--n 512]`: JPEG (1050×700, draft-mode `load_image` in '
         '`cache_images`) and the cache through `array_dls`, at 4 workers (or the CPU count).', '',
         '| machine | size | full decode, 1 thread | JPEG img/s by workers | cache img/s by workers (raw / with batch tfms) | epoch start s |', '|---|---|---|---|---|---|']
    for r in rs:
        j = ', '.join(f'{k}: {f(v, 0)}' for k,v in r['jpeg_img_s'].items())
        c = ', '.join(f"{k}: {f(v, 0)} / {f(r['cache_tfms_img_s'].get(k), 0)}" for k,v in r.get('cache_img_s', {}).items())
        e = ', '.join(f'{k}: {f(v, 2)}' for k,v in r.get('epoch_start_s', {}).items())
        L.append(f"| {where(r)} | {r['config']['size'][0]}×{r['config']['size'][1]} | {f(r['full_decode_1_img_s'], 0)} | {j} | {c} | {e} |")
    return L

def sec_lap(rs):
    L = ['## lap_epoch: LAP mining against a Siamese epoch', '', '`python bench/lap_epoch.py [--quick] [--n-known 15697] [--preset kaggle]`.', '',
         '| machine | n known / anchors × candidates | blocks | lap s (score s) | Siamese train img/s | epoch s | lap share | with refresh | note |',
         '|---|---|---|---|---|---|---|---|---|']
    for r in rs:
        lp = r['laps'][str(r['blocks'])]
        L.append(f"| {where(r)} | {r['n_known']} / {r['anchors']}×{r['candidates']} | {r['blocks']} | {f(r['lap_s'], 2)} ({f(lp['score_s'], 2)}) | "
                 f"{f(r['siamese_img_s'].get('default'))} ({r['arch']} @ {r['siamese_size'][0]}×{r['siamese_size'][1]}) | {f(r.get('epoch_s'))} | "
                 f"{f(r.get('lap_share'), 2, True)} | {f(r.get('mining_share'), 2, True)} | {r['note']} |")
    return L

def sec_pairs(rs):
    L = ['## pairs: all-pairs Siamese scoring', '', '`python bench/pairs.py [--quick] [--n 15697]`.', '',
         '| machine | n | d | naive s | ours | ours s | speed-up |', '|---|---|---|---|---|---|---|']
    for r in rs:
        L.append(f"| {where(r)} | {r['n']:,} | {r['d']} | {f(r['naive_s'], 2)}{' (scaled from ' + str(r['naive_rows']) + ' rows)' if r['naive_scaled'] else ''} | "
                 f"`{r['ours']}` | {f(r['ours_s'], 2)} | {f(r['speedup'])}× |")
    return L

def sec_full(rs):
    L = ['## fullsize: a full-size synthetic competition, per-epoch costs and the T4×2 projection', '',
         '`python bench/fullsize.py [--quick] [--gen-s 60] [--t4-ratio 0.1] [--ddp-scale 1.7]`.', '',
         '| machine | generated (s, img/s) | arch @ size, bs | ArcFace / Siamese img/s (tuned) | ArcFace epoch s | Siamese epoch s | full run here h | T4×2 h | fits 12 h |',
         '|---|---|---|---|---|---|---|---|---|']
    for r in rs:
        g = r.get('gen') or {}; pr = r.get('projection', {}); t = pr.get('tuned', pr.get('default', {}))
        ti = r.get('train_img_s', {})
        L.append(f"| {where(r)} | {g.get('train', '?')}+{g.get('test', '?')} ({f(g.get('gen_s'), 0)}, {f(g.get('img_s'), 0)}) | "
                 f"{r['arch']} @ {r['size'][0]}×{r['size'][1]}, {r['bs']} | {f(ti.get('arcface', {}).get('tuned'))} / {f(ti.get('siamese', {}).get('tuned'))} | "
                 f"{f(t.get('arcface_epoch_s'), 0)} | {f(t.get('siamese_epoch_s'), 0)} | {f(t.get('here_h'), 2)} | {f(t.get('t4x2_h'), 2)} | {t.get('fits_12h', '–')} |")
    return L

HEAD = """# Benchmarks

Each script writes `bench/results/<name>.json` (or `$BENCH_OUT/<name>.json`) with `device`, `date`, `versions` and its
keys; `python bench/report.py` turns the latest of them (CPU: `results/`, GPU: `results/gpu/`) into this page. Timings
are ratios measured in one run on one machine; they are never timed tests. On a CPU the scripts use one torch thread
(`BENCH_THREADS`): two threads on a busy 2-core box spin-wait and run 5-10× slower.

**On a lent GPU**, all of it in one go (about 5-6 minutes on an H100; every stage under its own timeout):

```bash
../shared/tools/device-wheels.sh          # here: fastai & co. as wheels in .whl/ (ignored by git)
# device tool: command "bash bench/device_run.sh", carry [".whl"], timeout_s 600; then
# copy the returned JSONs into bench/results/gpu/ and run python bench/report.py
OUT=/tmp/out bash bench/device_run.sh quick   # the same script as a CPU smoke test (2-3 minutes)
```
"""

NOTES = """## Notes

- **Ratios are per machine and per run.** `ratio` is the learner as it ships (`default`) over the plain loop on the same
  network, loss, batch and size; `tuned_ratio` adds what is measured in the variants (no per-batch progress bar, torch's
  fused AdamW, pinned memory, persistent workers). The variants are cumulative up to `tuned`, then one change each, so
  each knob's effect reads off its row. On a 2-core CPU shared with other jobs the figures swing by ±30 % with the load
  (`loadavg` is in each JSON); `--rounds 3` interleaves everything and keeps the best, and even so a CPU ratio above 1
  only means noise. CPU ratios are a smoke test of the harness; the targets are for a GPU.
- **What the CPU does show:** channels_last is worth +23-28 % on a CPU (`cpu_cl` against `tuned`, and the plain loop's
  `arcface` against `arcface_nchw`), so the learners use it on a CPU too, and the feature passes feed NHWC batches; the
  batch augmentation on a CPU costs more than the network at 32×64 (`no_aug`); on a GPU it is a few kernels per batch.
- **cpu_precision:** on a CPU with native bf16 (AVX512-BF16 or AMX) the learners' image batches train under bf16
  autocast (`CPUAutocast`); the feature passes stay in fp32 on every CPU and gain from NHWC alone.
- **Synthetic photos** are `make_synth` flukes. `loader` first resizes them to the real competition's typical 1050×700
  (JPEG quality 90) so that decode rates compare with real photos; `train_throughput` decodes them once into the cache at
  H×W, which is what the learners read.
- **LAP** runs on the CPU whatever the card; `lap_epoch` times it at the real n (15,697 known photos → 13,646 anchors ×
  25,361 candidates with `extra=True`) with the preset's `lap_blocks` and a `LapMining`-style scorer. On a CPU the
  Siamese epoch is timed at a toy size and scaled linearly to the anchors, so its share there is not the GPU's.
- **fullsize** projects to Kaggle's T4×2 with a stated T4/this-card throughput ratio (`--t4-ratio`, default 0.1 for an
  H100 and 0.07 for an H200, from the cards' memory bandwidth: convnets at 256×512 are mostly bandwidth-bound) and
  `--ddp-scale` 1.7 for two T4s: both are assumptions, recorded in the JSON, not measurements.
"""

def sec_cpu(rs):
    L = ['## cpu_precision: layout and precision of the CPU passes', '',
         '`python bench/cpu_precision.py [--quick] [--rounds 3] [--threads 2]` (efficientnet_lite0 @ 128×272: inference batch 64, training step batch 32).', '',
         '| machine | native bf16 | inference img/s: NCHW fp32 / NHWC fp32 / NHWC bf16 | speed-up | training step img/s: NCHW fp32 / NHWC fp32 / NHWC bf16 | speed-up |',
         '|---|---|---|---|---|---|']
    ks = ('nchw_fp32', 'nhwc_fp32', 'nhwc_bf16')
    for r in rs:
        L.append(f"| {where(r)} | {'yes' if r['cpu_bf16'] else 'no (emulated)'} | {' / '.join(f(r['infer_img_s'][k]) for k in ks)} | "
                 f"{' / '.join(f(r['infer_speedup'][k], 2) + '×' for k in ks)} | {' / '.join(f(r['train_img_s'][k]) for k in ks)} | "
                 f"{' / '.join(f(r['train_speedup'][k], 2) + '×' for k in ks)} |")
    return L

def sec_rehearsal(rs):
    "The rehearsal section (its description alone while there are no results)"
    r = rs[0] if rs else None
    L = ['## rehearsal: the Kaggle run at full size, on this CPU', '',
         '`python bench/rehearsal.py [--parts gen,data,post,runs] [--root /tmp/whale_rehearsal] [--scales 16,8,4] [--keep-cache] [--sia-fracs 1/16,1/4]`; '
         'each part can run alone and replaces its own key of `results/rehearsal.json` (`--quick`: tiny sets under ROOT/quick, '
         '`results/rehearsal_quick.json`, a smoke test). Every input is synthetic, and each part says how in its `notes`.', '',
         '- `gen`: a competition of the real shape: 25,361 train photos (9,664 new_whale), 5,004 whales (the real counts of whales '
         'with 1-5 photos, a fitted power law for 6-72, one of 73), 7,960 test photos (27.6 % unseen whales), 1050×700 JPEGs from '
         '`synth.render_photo`, boxes in their own folder; copies at 1/s of the whales (`--scales`, default 16,8,4; a stratified '
         'sample). Not a key figure.',
         '- `data`: seconds and peak RSS of each data-layer step on the full set with the kaggle preset (`read_competition` with '
         'the boxes, `merge_duplicates`, `auto_size`, `cache_images` of train, test and the two box-TTA crops).',
         '- `post`: seconds and peak RSS of `pipeline.score_model` for knn (1,280-d), arcface and siamese (512-d), two TTA views and '
         'three box crops, on synthetic feature matrices (no training, no pseudo-label round), then `blend` and the submission. '
         'The Siamese runs on shares of the test photos (`--sia-fracs`) and its full size is extrapolated linearly.',
         '- `runs`: `whale-kernel run` (cpu preset) on the copies: wall, polled max RSS, the run\'s own stage table, and '
         'per stage the exponent b of secs ≈ c·N^b (N train photos) with its value at 25,361.', '']
    if not r: return L + ['(not yet run)']
    L += [f"Machine: {r['device']} ({r['date'][:10]}, torch {r['versions']['torch']}).", '', '| part | step | secs | peak RSS GB | note |', '|---|---|---|---|---|']
    g = r.get('gen')
    for k, v in sorted((g or {}).get('sets', {}).items(), key=lambda kv: -kv[1]['train']):
        L.append(f"| gen | {k}: {v['train']:,} train + {v['test']:,} test, {v['whales']:,} whales | {f(v['secs'])} | – | {f(v['img_s'])} photos/s, {v['jpeg_gb']} GB{'; ' + v['note'] if v.get('note') else ''} |")
    if not g: L.append('| gen | – | – | – | not yet run |')
    dt = r.get('data')
    for k, v in (dt or {}).get('stages', {}).items():
        L.append(f"| data | {k} ({v['photos']:,} photos) | {f(v['secs'])} | {f(v['peak_rss_gb'], 2)} | {f(v['photos_s'])} photos/s"
                 + (f", cache {v['cache_gb']} GB" if 'cache_gb' in v else '') + ' |')
    L.append(f"| data | total at {dt['size'][0]}×{dt['size'][1]} | {f(dt['total']['secs'])} | {f(dt['total']['peak_rss_gb'], 2)} | cache {dt['total']['cache_gb']} GB |"
             if dt else '| data | – | – | – | not yet run |')
    ps = r.get('post')
    for k, v in (ps or {}).get('stages', {}).items():
        m = ps['models'].get(k) or (ps['blend'] if k == 'blend' else {})
        note = [f"valid / test MAP@5 {m['valid_map5']} / {m['test_map5']}"] if m else []
        note += [f"extrapolated, {v['extrapolated']}"] if 'extrapolated' in v else [f"on {k.split('@')[1]} of the test photos"] if '@' in k else []
        L.append(f"| post | {k} | {f(v['secs'])} | {f(v['peak_rss_gb'], 2)} | {'; '.join(note)} |")
    if not ps: L.append('| post | – | – | – | not yet run |')
    ru = r.get('runs')
    for k, v in sorted((ru or {}).get('sets', {}).items(), key=lambda kv: kv[1].get('n_train') or 0):
        st = ', '.join(f"{s} {f(o['secs'], 0)} s" for s, o in (v.get('stages') or {}).items())
        tm = ', '.join(f'{m} {x}' for m, x in (v.get('test') or {}).items())
        kp = '; '.join(f'{m} kept {x}' for m, x in (v.get('kept') or {}).items() if x and m != 'knn')
        L.append(f"| runs | {k}: {v.get('n_train') or '?'} train (rc {v['rc']}) | {f(v['wall_s'])} | {f(v['max_rss_gb'], 2)} | {st}; test MAP@5 {tm or '–'}"
                 + (f"; {kp}" if kp else '') + (f"; preset fields {v['preset_set']}" if v.get('preset_set') else '') + ' |')
    if not ru: L.append('| runs | – | – | – | not yet run |')
    if ru and ru.get('growth'):
        L += ['', f"Growth of the cpu-preset run, secs ≈ c·N^b fitted on every size (fastest: **{ru['fastest']}**), each stage extrapolated "
              f"to 25,361 train photos, and b between the two largest sets alone (fastest: **{ru.get('fastest_last') or '–'}**):", '',
              '| stage | b (secs) | secs at full size | b, two largest sets | b (peak RSS) | peak RSS GB at full size |', '|---|---|---|---|---|---|']
        for k, v in ru['growth'].items():
            L.append(f"| {k} | {f(v.get('secs_b'), 2)} | {f(v.get('secs_full'), 0)} | {f(v.get('secs_b_last'), 2)} | {f(v.get('peak_rss_gb_b'), 2)} | {f(v.get('peak_rss_gb_full'), 2)} |")
        t = ru.get('totals', {})
        L.append(f"| whole run (wall, max RSS) | {f(t.get('wall_s_b'), 2)} | {f(t.get('wall_s_full'), 0)} | – | {f(t.get('max_rss_gb_b'), 2)} | {f(t.get('max_rss_gb_full'), 2)} |")
        L += ['', 'The learners train for the optimizer steps the preset plans (`arcface_steps`, `arcface_ft_steps`, `siamese_steps`, '
              'within their epoch floors and ceilings) and stop early on validation, so their stage time follows what each run kept '
              '(the phases in the runs\' notes) more than N: their b fits what these runs did, not a law. The kNN, which only '
              'embeds and compares, is the stage whose time is set by N alone.']
    return L

def sec_small(rs):
    "Small sets drawn from the dog faces: test MAP@5 per model and the blend, per draw"
    L = ['## small_sets: small real sets drawn from the dog faces', '',
         '`python bench/small_sets.py [--draws 10] [--dogs 40] [--new 15]`: each draw is a competition of 40 dogs with two or more '
         'train photos (all their photos) and 15 train `new_whale` photos, test `new_whale` to 27.6 %, run through the whole `cpu` '
         'preset; its split holds about 20 known photos, so every choice pools three repeated splits. Test MAP@5 from the draw\'s '
         'own `solution.csv`.', '']
    for r in rs:
        import small_sets
        L += [f"{where(r)}, `{r['command']}`{' (overrides ' + str(r['sets']) + ')' if r.get('sets') else ''}{'; code ' + r['code'] if r.get('code') else ''}"
              f"{'; whitening fitted on ' + r['whitening'] if r.get('whitening') else ''}:", '',
              small_sets.table(r), '']
    return L

def sec_default(rs):
    "The README's main command, timed"
    L = ['## default_run: the README\'s main command', '',
         '`python bench/default_run.py [--runs 3] [--extra="ARGS"]`: `whale-kernel run --out DIR [ARGS]` from an empty folder (the embedded demo: '
         'synthetic default, `cpu` preset, all models), wall time of the whole command; the command of each row is in its JSON.', '',
         '| device | runs | median wall s | median blend test MAP@5 | most log lines | per run: wall s, blend test |', '|---|---|---|---|---|---|']
    for r in rs:
        per = '; '.join(f"{o['wall_s']:.0f}, {(o['test'] or {}).get('blend', float('nan')):.4f}" for o in r['runs'])
        L.append(f"| {where(r)} | {len(r['runs'])} | {r['median_wall_s']:.0f} | {r['median_blend_test']:.4f} | {r['max_log_lines']} | {per} |")
    return L

def sec_finetune_step(rs):
    "An ArcFace fine-tune step, taken apart"
    L = ['## finetune_step: where an ArcFace fine-tune step goes', '',
         '`python bench/finetune_step.py [--shares all,late,0.333] [--precisions bf16,fp32]`: the `cpu` preset\'s fine-tune '
         '(`arcface_learner` with its augmentations on the synthetic default\'s photos, 128×272, batch 32) with the top '
         '`arcface_unfreeze` share of the backbone\'s layer groups thawed, on photos or (`--trunk-views`) on the cached '
         'output of the frozen trunk below it, as `arcface_trunk_views` trains; median milliseconds per training batch '
         'of each part, all variants one after another in one process.', '',
         '| machine | thawed | reads | precision | trainable params | ms / step | against late, bf16 | data | forward + loss | backward | optimizer |',
         '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rs:
        for o in r['runs']:
            m = o['median_ms']; tv = o.get('trunk_views')
            reads = f"trunk cache, {tv} views ({o['trunk_cache_s']:.0f} s once)" if tv else 'photos'
            L.append(f"| {where(r)} | {o['unfreeze']} | {reads} | {o['precision']} | {o['trainable']:,} | {o['ms_per_step']:.0f} | "
                     f"{f(o['vs_late_bf16'], 2)} | {m['data']:.0f} | {m['forward']:.0f} | {m['backward']:.0f} | {m['step']:.0f} |")
    return L

def sec_default_parts(rs):
    "Where the default run's time goes, and what cheaper recipes cost"
    L = ['## default_run_parts: where the default run\'s time goes', '']
    for r in rs:
        L += [f"{where(r)}. {r['note']}", '', '| moment (base run) | seconds from start |', '|---|---|']
        L += [f'| {k} | {v:.1f} |' for k, v in r['timeline_base_s'].items()]
        L += ['', '| run | knn | arcface | siamese | blend (test MAP@5) | stage seconds |', '|---|---|---|---|---|---|']
        for name, o in (('base: `' + r['command_base'] + '`', r['base']),
                        ('variant: ' + ', '.join(f'{k}={v}' for k, v in r['variant']['overrides'].items()), r['variant'])):
            t = o['test']; st = ', '.join(f'{k} {v:.0f}' for k, v in o['stages'].items())
            L.append(f"| {name} | {t['knn']:.4f} | {t['arcface']:.4f} | {t['siamese']:.4f} | {t['blend']:.4f} | {st} |")
        L += ['', r['findings']]
        if (o := r.get('default_with_equalize_choice')):
            st = ', '.join(f'{k} {v:.0f}' for k, v in o['stages'].items())
            L += ['', f"With histogram equalisation a choice (`{o['command']}`): {o['wall_s']:.0f} s wall, {o['log_lines']} log lines, "
                      f"equalised photos kept: {o['equalize']}; test MAP@5 " + ', '.join(f'{k} {v:.4f}' for k, v in o['test'].items()) +
                      f"; stage seconds {st}."]
    return L

def sec_dogs_seeds(rs):
    "The dog faces, whole cpu-preset runs on several seeds"
    L = ['## dogs_seeds: the dog faces, whole `cpu`-preset runs', '']
    for r in rs:
        L += [f"{where(r)}; rows without their own code: {r['code']}; {r['notes']}.", '',
              '| run | splits | kNN val / test | ArcFace val / test | Siamese val / test | blend val / test | wall s |', '|---|---|---|---|---|---|---|']
        vt = lambda o, m: f"{o['valid'][m]:.4f} / {o['test'][m]:.4f}"
        for k, o in r['runs'].items():
            how = f"; code {o['code']}" if o.get('code') else ''
            how += f"; {o['jobs']} runs at once, {o['threads']} thread(s) each" if (o.get('jobs') or 1) > 1 else ''
            L.append(f"| {k}: `{o['command']}`{how} | {o['splits']} | " + ' | '.join(vt(o, m) for m in ('knn', 'arcface', 'siamese', 'blend')) +
                     f" | {o['wall_s']:.0f} |")
        e = r['earlier']
        L.append(f"| seed 42: {e['note']} | 2 | " + ' | '.join(vt(e, m) for m in ('knn', 'arcface', 'siamese', 'blend')) + ' | – |')
        b = r['single_split_before']
        L += ['', f"{b['note']}: seed 42 {b['seed42']}, seed 1 {b['seed1']}, seed 2 {b['seed2']}."]
        if r.get('finding'): L += ['', r['finding'] + '.']
    return L

def sec_whitening(rs):
    "Which photos the imprinted whitening is fitted on: the scale of held-out against test photos"
    L = ['## whitening: which photos the imprinted whitening neck is fitted on', '',
         '`python bench/whitening.py --runs RUN_OR_DATA ...`: the frozen ArcFace\'s features on the run\'s first split; per '
         'whitening set, the median best-match cosine of known and new_whale photos, held-out against test, and known-photo '
         'retrieval MAP@5. Held-out and test photos on one scale is what lets a threshold chosen on validation work on test.', '']
    for r in rs:
        L += [f"{where(r)}, `{r['command']}`:", '',
              '| set | whitening fitted on | known: held-out / test cosine | new_whale: held-out / test cosine | retrieval MAP@5: held-out / test |',
              '|---|---|---|---|---|']
        for o in r['sets']:
            for k, v in o.items():
                if not isinstance(v, dict): continue
                b, m = v['best_cos'], v['known_map']
                L.append(f"| {Path(o['data']).parent.name if Path(o['data']).name == 'data' else Path(o['data']).name} | {k} | "
                         f"{b['valid_known']:.3f} / {b['test_known']:.3f} | {b['valid_new']:.3f} / {b['test_new']:.3f} | "
                         f"{m['valid']:.3f} / {m['test']:.3f} |")
    return L

def sec_blend_rules(rs):
    "Ensemble rules replayed on saved scores"
    L = ['## blend_rules: ensemble rules replayed on finished runs', '',
         '`python bench/blend_rules.py RUN_DIR ...`: which members enter the blend, its weights and α, and the `new_whale` '
         'threshold\'s prior, judged on the test MAP@5 of saved runs without training again.', '']
    for r in rs:
        keys = list(r['mean'])
        L += [f"{where(r)}, runs {', '.join('`' + k + '`' for k in r['runs'])}" + (f"; {r['note']}" if r.get('note') else '') + ':', '',
              '| rule | ' + ' | '.join(Path(k).name for k in r['runs']) + ' | mean | worst against the kNN |',
              '|---|' + '---|'*(len(r['runs']) + 2)]
        L += [f"| {k} | " + ' | '.join(f"{v[k]:.4f}" for v in r['runs'].values()) + f" | {r['mean'][k]:.4f} | {r['worst_vs_knn'][k]:+.4f} |" for k in keys]
    return L

def main():
    L = [HEAD]
    for name, sec in [('train_throughput', sec_train), ('loader', sec_loader), ('lap_epoch', sec_lap), ('pairs', sec_pairs),
                      ('fullsize', sec_full), ('cpu_precision', sec_cpu), ('rehearsal', sec_rehearsal),
                      ('default_run', sec_default), ('default_run_parts', sec_default_parts), ('finetune_step', sec_finetune_step), ('small_sets', sec_small), ('dogs_seeds', sec_dogs_seeds), ('whitening', sec_whitening),
                      ('blend_rules', sec_blend_rules)]:
        rs = load(name) + (load('small_sets_whiten_all') + load('small_sets_pooled') + load('small_sets_t3v4') + load('small_sets_tr8')
                            + load('small_sets_pv') + load('small_sets_ft')
                            if name == 'small_sets' else [])   # the same draws: whitened on every photo; pooled twins and round; top third thawed, four Siamese views; trunk cache; pooled verdict; fine-tune rate 1e-2 and α near 1
        if name == 'blend_rules': rs += load('blend_rules_dogs')                            # the dog faces' whole runs
        if rs or name == 'rehearsal': L += sec(rs) + ['']
        else: L += [f'## {name}', '', f'(no results yet: `python bench/{name}.py`)', '']
    L += [NOTES, 'Older benchmarks: `bench_data.py`, `bench_arcface.py`, `bench_lap.py`, `bench_synth.py` (results in `results/*.md`).', '']
    (B/'README.md').write_text('\n'.join(L))
    print(f'wrote {B/"README.md"}')

if __name__ == '__main__': main()
