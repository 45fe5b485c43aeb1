# Describe eval/stats-dev-s24/pair.jsonl (no verdict): per mode and statistic, the MAD index at
# each backdoor's target (attack success >= 0.9) against the largest of each clean model.
#   python3 eval/stats-dev-s24/pair-table.py [pair.jsonl] [manifest.json]
import json, sys, collections, numpy as np
src = sys.argv[1] if len(sys.argv) > 1 else 'eval/stats-dev-s24/pair.jsonl'
man = sys.argv[2] if len(sys.argv) > 2 else 'target/zoo-standard/manifest.json'
models = {m['id']: m for m in json.load(open(man))['models']}
rows = collections.defaultdict(list)
for l in open(src):
    r = json.loads(l); rows[(r['model'], r['mode'])].append(r)
def idx(v, tail):
    v = np.asarray(v, float); med = np.median(v); mad = 1.4826 * np.median(abs(v - med))
    z = (v - med) / max(mad, 1e-12)
    return -z if tail == 'small' else z
measures = {
    'delta_norm': (lambda r: r['delta_norm'], 'small'),
    'agree@0': (lambda r: r['pair_agreement'][0], 'large'),
    'agree@1': (lambda r: r['pair_agreement'][1], 'large'),
    'agree mean': (lambda r: np.mean(r['pair_agreement']), 'large'),
    'disp@0': (lambda r: r['dispersion'][0], 'small'),
}
for mode in ['target', 'pair']:
    print(f'## consensus = "{mode}"')
    print('| measure | clean models\' largest index | backdoors above it | target ranked first | per family first |')
    print('|---|---|---|---|---|')
    for name, (get, tail) in measures.items():
        cm = []; bt = []; first = collections.Counter(); fam = collections.Counter()
        for (m, md), rs in rows.items():
            if md != mode: continue
            rs = sorted(rs, key=lambda r: r['class'])
            v = idx([get(r) for r in rs], tail); x = models[m]
            if x['attack'] == 'clean': cm.append(v.max()); continue
            if (x.get('attack_success_rate') or 0) < 0.9: continue
            t = x['target']; bt.append(v[t]); fam[x['attack']] += 1
            if int(np.argmax(v)) == t: first[x['attack']] += 1
        top = max(cm); bt = np.array(bt)
        per = ', '.join(f'{a} {first[a]}/{fam[a]}' for a in sorted(fam))
        print(f'| {name} | {top:.2f} | {(bt > top).sum()} of {len(bt)} | {sum(first.values())} | {per} |')
    print()
