# Session 25 (issue 14, development scans only): `agree` scored class by class, described.
# For each model of an eval folder (results.jsonl and reports/{cepa,nc}/ID.json): each detector's
# score over its threshold at its own top class (rc, rn; the rule's `agree` score follows from
# them, see EVALUATION.md), and the largest over the classes of the mean of the two detectors'
# indices at that class, each over its threshold (`per_class`, the candidate). Prints; decides
# nothing, and no threshold is applied.
# Usage: python3 eval/stats-dev-s25/perclass.py EVAL_DIR
import json, sys, os
root = sys.argv[1]
res = {}
for l in open(os.path.join(root, 'results.jsonl')):
    o = json.loads(l); res[(o['model'], o['detector'])] = o
models = sorted({m for m, d in res if d == 'cepa'})
def load(det, m):
    p = os.path.join(root, 'reports', det, m + '.json')
    return json.load(open(p)) if os.path.exists(p) else None
rows = []
for m in models:
    c = load('cepa', m); n = load('nc', m)
    if c is None or n is None: continue
    oc = res[(m, 'cepa')]; on = res[(m, 'nc')]
    tc = oc['threshold']; tn = on['threshold']
    ci = {k['class']: k['anomaly_index'] for k in c['decision']['classes']}
    ni = {k['target']: k['anomaly_index'] for k in n['classes']}
    rc, rn = oc['score'] / tc, on['score'] / tn
    pc = max(((max(ci[k], 0) / tc + max(ni[k], 0) / tn) / 2, k) for k in ci)
    tgt = oc['truth_target']
    rows.append((oc['dataset'], oc['attack'], m, tgt, oc['most_anomalous'], rc, on['most_anomalous'], rn, pc[0], pc[1]))
for r in rows:
    print('%-8s %-10s %-32s truth=%-4s cepa@%s rc=%.2f  nc@%s rn=%.2f  per_class=%.3f@%d' % r)
