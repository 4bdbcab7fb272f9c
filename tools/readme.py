"""Write README.md from nbs/index.ipynb without quarto (nbdev_readme needs quarto, which cannot be installed offline).
Markdown cells verbatim; code cells are hidden (the index shows no code); image outputs go to nbs/index_files/.
    python tools/readme.py          # writes README.md
    python tools/readme.py --check  # exits 1 if README.md is out of date"""
import base64, json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]

def render():
    nb = json.loads((root/'nbs'/'index.ipynb').read_text())
    parts, imgs = [], {}
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] == 'markdown':
            parts.append(''.join(c['source']))
        for o in c.get('outputs', []):
            for kind, ext in (('image/jpeg', 'jpg'), ('image/png', 'png')):     # the first one each output has
                if data := o.get('data', {}).get(kind):
                    name = f'index_files/cell{i}.{ext}'
                    imgs[name] = base64.b64decode(''.join(data))
                    parts.append(f'![]({"nbs/" + name})'); break
    md = '\n\n'.join(parts) + '\n'
    md = md.replace('\n> ', '\n> ', 1)
    md = re.sub(r'\]\((\w+\.ipynb)\)', r'](nbs/\1)', md)          # the map's links, from the repository root
    return md, imgs

if __name__ == '__main__':
    md, imgs = render()
    if '--check' in sys.argv:
        ok = (root/'README.md').exists() and (root/'README.md').read_text() == md
        sys.exit(0 if ok else 1)
    old = set((root/'nbs'/'index_files').glob('cell*')) - {root/'nbs'/n for n in imgs}
    for fn in old: fn.unlink()                          # pictures of cells that no longer have one
    for name, b in imgs.items():
        (root/'nbs'/name).parent.mkdir(parents=True, exist_ok=True); (root/'nbs'/name).write_bytes(b)
    (root/'README.md').write_text(md)
    print('wrote README.md')
