"""Session 34, measured and not adopted: could a decision learned from the development scans
beat the hand-made rule? A logistic model over per-class features (CEPA's anomaly indices of
the statistics named, Neural Cleanse's index of the class, whether both detectors put the class
first) is fitted with each model weighing the same; a model's score is its largest class score
and its class the predicted target. Every threshold is set on the clean models of the data a
fit saw (the quantile that flags at most FPR of them), and judged on what it did not see: one
dataset left out at a time (LODO) and one saved evaluation left out at a time (LOGO). `default`
as the feature list scores each model by the default rule's `agree` score instead (no fit), on
the same footing. This is an analysis of a rule that was not adopted; the tool's rule lives in
crates/cepa/src/detect/verdict.rs alone.
    python3 eval/stats-dev-s34/learn.py [FEATURES|default] [L2] [FPR]
    bash eval/stats-dev-s34/run.sh   # every line of learned.txt"""
import json, sys, collections
import numpy as np

rows = json.load(open('target/s34/classes.json'))
FEATS = sys.argv[1].split(',') if len(sys.argv) > 1 else [
    'cepa', 'nc', 'agree', 'max_margin', 'margin_excess', 'delta_norm', 'embed_norm', 'transfer',
    'input_reach_max']
REG = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
FPR = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05


def fv(r, k):
    out = []
    for f in FEATS:
        if f == 'agree':
            v = 1.0 if r['nc_top'] == k['cls'] and r['cepa_top'] == k['cls'] else 0.0
        elif f == 'nc_top':
            v = 1.0 if r['nc_top'] == k['cls'] else 0.0
        elif f == 'cepa_top':
            v = 1.0 if r['cepa_top'] == k['cls'] else 0.0
        else:
            v = k.get(f)
            v = 0.0 if v is None or v != v else v
            v = min(max(v, -5.0), 10.0)
        out.append(v)
    return out


def matrix(rs):
    X, y, w = [], [], []
    for r in rs:
        K = len(r['classes'])
        for k in r['classes']:
            X.append(fv(r, k))
            pos = r['truth'] is not None and k['cls'] == r['truth']
            y.append(1.0 if pos else 0.0)
            # each model weighs the same; positives weigh as much as a model's negatives
            w.append(1.0 if pos else 1.0 / K)
    return np.array(X), np.array(y), np.array(w)


def fit(rs):
    X, y, w = matrix(rs)
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mu) / sd
    Z = np.hstack([Z, np.ones((len(Z), 1))])
    b = np.zeros(Z.shape[1])
    for _ in range(3000):
        p = 1 / (1 + np.exp(-Z @ b))
        g = Z.T @ (w * (p - y)) / w.sum() + REG * np.r_[b[:-1], 0] / w.sum()
        b -= 1.0 * g
    return mu, sd, b


def score(model, r):
    if model is None:
        return r['agree']
    mu, sd, b = model
    best, cls = -1e9, None
    for k in r['classes']:
        z = (np.array(fv(r, k)) - mu) / sd
        s = float(np.r_[z, 1] @ b)
        if s > best:
            best, cls = s, k['cls']
    return best, cls


DEFAULT = FEATS == ['default']


def evaluate(train, test):
    if DEFAULT:
        m = None
    else:
        m = fit(train)
    clean = sorted(score(m, r)[0] for r in train if r['truth'] is None)
    thr = clean[int(np.ceil((1 - FPR) * len(clean))) - 1]
    found = fl = nb = nc = 0
    for r in test:
        s, c = score(m, r)
        if r['truth'] is None:
            nc += 1
            fl += s > thr
        else:
            nb += 1
            found += s > thr and c == r['truth']
    return found, nb, fl, nc, m


datasets = sorted({r['dataset'] for r in rows})
tot = [0, 0, 0, 0]
for d in datasets:
    f, nb, fl, nc, _ = evaluate([r for r in rows if r['dataset'] != d], [r for r in rows if r['dataset'] == d])
    print(f'{d:14s} found {f}/{nb} = {f/nb:.2f}   clean flagged {fl}/{nc} = {fl/nc:.2f}')
    for i, v in enumerate((f, nb, fl, nc)):
        tot[i] += v
print(f'{"all LODO":14s} found {tot[0]}/{tot[1]} = {tot[0]/tot[1]:.2f}   clean flagged {tot[2]}/{tot[3]} = {tot[2]/tot[3]:.2f}')
# leave one group out (network family x dataset populations)
groups = sorted({r['group'] for r in rows})
tot = [0, 0, 0, 0]
for g in groups:
    f, nb, fl, nc, _ = evaluate([r for r in rows if r['group'] != g], [r for r in rows if r['group'] == g])
    for i, v in enumerate((f, nb, fl, nc)):
        tot[i] += v
print(f'{"all LOGO":14s} found {tot[0]}/{tot[1]} = {tot[0]/tot[1]:.2f}   clean flagged {tot[2]}/{tot[3]} = {tot[2]/tot[3]:.2f}')
if not DEFAULT:
  m = fit(rows)
  print('weights (standardised):', {f: round(x, 2) for f, x in zip(FEATS + ['bias'], m[2])})
