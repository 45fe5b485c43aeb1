"""Recompute the combined index from saved reports with a binomial floor on the transfer statistic
(an offline what-if; see EVALUATION.md). python3 scripts/recompute_rules.py"""
import json, glob, statistics as st, math
def idx(vals, large, floor=0.0):
    m=st.median(vals); mad=st.median([abs(v-m) for v in vals])
    sc=1.4826*mad
    if sc==0: sc=1.2533*st.mean([abs(v-m) for v in vals])
    sc=max(sc, floor, 1e-12*max(1,abs(m)))
    if sc==0: return [0.0]*len(vals)
    return [((v-m) if large else (m-v))/sc for v in vals]
for f in sorted(glob.glob('eval/reports-default/*.json')):
    r=json.load(open(f)); cls=r['decision']['classes']; K=len(cls)
    feas=[c['feasible'] for c in cls]
    n_hold = r['images']['holdout_per_class']*(K-1)
    terms=[]
    for j,s0 in enumerate(cls[0]['statistics']):
        stat=s0['statistic']
        if stat=='mu_norm': continue
        raw=[c['statistics'][j]['value'] for c in cls]
        ok=[feas[i] and raw[i]==raw[i] for i in range(K)]
        vals=[raw[i] for i in range(K) if ok[i]]
        floor=0.0
        if stat=='transfer':
            p=min(max(st.median(vals),1.0/n_hold),1-1.0/n_hold); floor=math.sqrt(p*(1-p)/n_hold)
        sub=idx(vals, stat=='transfer', floor)
        least=min(sub); it=iter(sub)
        terms.append([next(it) if ok[i] else least for i in range(K)])
    mean=[sum(t[i] for t in terms)/len(terms) for i in range(K)]
    med=st.median(mean); mad=st.median([abs(v-med) for v in mean]); sc=max(1.4826*mad, 1/math.sqrt(len(terms)))
    fin=[(v-med)/sc for v in mean]
    b=max(range(K), key=lambda i: fin[i])
    print(f.split('/')[-1], b, round(fin[b],2), 'mean', round(mean[b],2))
