# Development survey (no verdict): per-source statistics from the saved per-class
# `source_delta` of CEPA scans. Usage: python3 source-spread.py POOL_DIR [POOL_DIR...]
import json, numpy as np, glob, os, sys
def idx(v, tail):
    v = np.asarray(v, float); med = np.nanmedian(v); mad = 1.4826 * np.nanmedian(abs(v - med))
    z = (v - med) / max(mad, 1e-12)
    return -z if tail == 'small' else z
def matrix(r):
    cl = r['decision']['classes']; K = len(cl)
    M = np.full((K, K), np.nan)  # M[s, t]: mean delta norm of source s's images sent to t
    for c in cl:
        t = c['class']
        for s, v in enumerate(c.get('source_delta') or []):
            if v is not None and s != t: M[s, t] = v
    return M
def stats(M):
    K = M.shape[0]; out = {}
    with np.errstate(all='ignore'):
        out['delta'] = idx(np.nanmean(M, 0), 'small')
        out['cv'] = idx(np.nanstd(M, 0) / np.nanmean(M, 0), 'small')
        rel = M / np.nanmedian(M, 1, keepdims=True)  # per source, relative to its usual cost
        out['rel_med'] = idx(np.nanmedian(rel, 0), 'small')
        out['rel_max'] = idx(np.nanmax(rel, 0), 'small')
        out['rel_q75'] = idx(np.nanquantile(rel, 0.75, 0), 'small')
        rk = np.argsort(np.argsort(np.where(np.isnan(M), np.inf, M), 1), 1).astype(float)
        rk[np.isnan(M)] = np.nan
        out['rank_mean'] = idx(np.nanmean(rk, 0), 'small')
    return out
rows = []
for pool in sys.argv[1:]:
    man = {x['id']: x for x in json.load(open(os.path.join(pool, 'manifest.json')))['models']}
    for f in sorted(glob.glob(os.path.join(pool, 'reports/cepa/*.json'))):
        n = os.path.basename(f)[:-5]; x = man.get(n)
        if x is None: continue
        M = matrix(json.load(open(f)))
        if np.isnan(M).all(): continue
        rows.append((n, x, stats(M)))
kinds = list(rows[0][2].keys())
for kind in kinds:
    out = []
    for ds in ['cifar10', 'mnist', 'fashion-mnist', 'gtsrb32']:
        cm = []; bt = []; rk = []; miss = []
        for n, x, st in rows:
            if x['dataset'] != ds: continue
            v = st[kind]
            if x['attack'] == 'clean': cm.append(v.max())
            elif (x.get('attack_success_rate') or 0) >= 0.9:
                t = x['target']; bt.append(v[t]); rk.append(int(np.nanargmax(v)) == t)
        if not cm or not bt: continue
        m = max(cm); bt = np.array(bt)
        out.append(f"{ds[:5]}: clean max {m:5.2f} bd>{(bt > m).sum()}/{len(bt)} top1 {sum(rk)}")
    print(f"{kind:9s}", ' | '.join(out))
