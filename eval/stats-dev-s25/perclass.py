# Session 25 (issue 14, development scans only): `agree` scored class by class, described.
# For each model of an eval folder (results.jsonl and reports/{cepa,nc}/ID.json), the current
# score (the top classes, as the Rust rule) beside the largest over the classes of the mean of
# the two detectors' indices at that class, each over its threshold. Prints; decides nothing.
# Usage: python3 eval/stats-dev-s25/perclass.py EVAL_DIR
import json, sys, os, glob
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
    lone = max(rc, rn) / 1.5
    top = (rc + rn) / 2 if oc['most_anomalous'] == on['most_anomalous'] else -9
    cur = max(top, lone)
    pc = max(((max(ci[k], 0) / tc + max(ni[k], 0) / tn) / 2, k) for k in ci)
    new = max(pc[0], lone)
    tgt = oc['truth_target']
    rows.append((oc['dataset'], oc['attack'], m, tgt, cur, new, pc[1], oc['most_anomalous'], on['most_anomalous'], rc, rn))
for r in rows:
    print('%-8s %-10s %-32s t=%-4s cur=%.3f new=%.3f@%d  cepa@%s nc@%s rc=%.2f rn=%.2f' % r)
