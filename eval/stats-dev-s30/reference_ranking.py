"""Session 30 (EVALUATION.md, "Session 30"): reference clean models as a per-network calibration,
measured on saved scans. An analysis of the per-class anomaly indices that committed evaluations
saved (reports/cepa/*.json, reports/nc/*.json); it runs no detector and implements no rule of the
tool (the default rule lives in crates/cepa/src/detect/verdict.rs and is unchanged). Groups are
network x dataset; each model's references are the clean models of its group other than itself.

    python3 eval/stats-dev-s30/reference_ranking.py eval/standard eval/standard-cifar10-s23 \
      eval/standard-cifar10-s29 eval/judge-allconv eval/judge-s22 eval/judge-vgg eval/judge-s20 \
      eval/judge-s21 eval/judge-s25 eval/holdout-fashion eval/holdout-resnet
"""
import json,glob,os,sys,statistics as st
from collections import defaultdict
def load(evaldir):
    res={}
    for l in open(os.path.join(evaldir,'results.jsonl')):
        r=json.loads(l); res[(r['model'],r['detector'])]=r
    models={}
    for (m,det),r in res.items():
        if det!='cepa' or (m,'nc') not in res: continue
        fc=os.path.join(evaldir,'reports/cepa',m+'.json'); fn=os.path.join(evaldir,'reports/nc',m+'.json')
        if not (os.path.exists(fc) and os.path.exists(fn)): continue
        d=json.load(open(fc))['decision']; n=json.load(open(fn))
        a={c['class']:c['anomaly_index'] for c in d['classes']}
        b={c['target']:c['anomaly_index'] for c in n['classes']}
        if len(a)!=len(b): continue
        grp=m.split('-'+r['attack']+'-')[0]
        models[(evaldir,m)]=dict(t=r['truth_target'],a=a,b=b,grp=(evaldir,grp),attack=r['attack'])
    return models
M={}
for d in sys.argv[1:]: M.update(load(d))
groups=defaultdict(list)
for k,v in M.items(): groups[v['grp']].append(k)
def adj(m,key,mode):
    v=M[m]; refs=[c for c in groups[v['grp']] if M[c]['t'] is None and c!=m]
    out={}
    for k in v[key]:
        x=min(v[key][k],3.0) if key=='a' else v[key][k]
        if mode=='raw' or len(refs)<3: out[k]=x
        else:
            rv=[ (min(M[c][key][k],3.0) if key=='a' else M[c][key][k]) for c in refs]
            out[k]=x-st.mean(rv)
    return out
def combo(m,mode,tc=1.5,tn=2.0,lone=1.5):
    a=adj(m,'a',mode); b=adj(m,'b',mode)
    ka=max(a,key=a.get); kb=max(b,key=b.get)
    rc=a[ka]/tc; rn=b[kb]/tn
    if ka==kb: s=max((rc+rn)/2, max(rc,rn)/lone); k=ka
    else: s=max(rc,rn)/lone; k=ka if rc>=rn else kb
    return s,k
def score(m,det,mode):
    if det=='agree': return combo(m,mode)
    a=adj(m,'a' if det=='cepa' else 'b',mode); k=max(a,key=a.get); return a[k],k
ok=[g for g in groups if sum(M[c]['t'] is None for c in groups[g])>=4]
print("groups with >=4 clean:", [(g[1],len(groups[g]),sum(M[c]['t'] is None for c in groups[g])) for g in ok])
for det in ['cepa','nc','agree']:
  for mode in ['raw','sub']:
    F=T=N=0; aucs=[]
    for g in ok:
        ms=groups[g]; sc={m:score(m,det,mode) for m in ms}
        cl=[sc[m][0] for m in ms if M[m]['t'] is None]; thr=max(cl)
        bd=[m for m in ms if M[m]['t'] is not None]
        F+=sum(sc[m][0]>thr and sc[m][1]==M[m]['t'] for m in bd)
        T+=sum(sc[m][1]==M[m]['t'] for m in bd); N+=len(bd)
        if bd: aucs.append(sum((sc[p][0]>n)+0.5*(sc[p][0]==n) for p in bd for n in cl)/len(bd)/len(cl))
    print(f"{det:6s} {mode}: above the group's clean max at the target {F}/{N}, target first {T}/{N}, mean group AUC {st.mean(aucs):.3f}")

print("--- self-calibrated against the references (suspect excluded from its references)")
def score_with(m,refs,det,mode):
    v=M[m]
    def adjx(key):
        out={}
        for k in v[key]:
            f=(lambda c: min(M[c][key][k],3.0)) if key=='a' else (lambda c: M[c][key][k])
            x=f(m)
            out[k]= x if mode=='raw' else x-st.mean(f(c) for c in refs)
        return out
    if det in ('cepa','nc'):
        a=adjx('a' if det=='cepa' else 'b'); k=max(a,key=a.get); return a[k],k
    a=adjx('a'); b=adjx('b'); ka=max(a,key=a.get); kb=max(b,key=b.get)
    rc=a[ka]/1.5; rn=b[kb]/2.0
    if ka==kb: return max((rc+rn)/2,max(rc,rn)/1.5),ka
    return max(rc,rn)/1.5,(ka if rc>=rn else kb)
for det in ['cepa','nc','agree']:
  for mode in ['raw','sub']:
   for rule in ['max','max*1.2','mean+3sd']:
    TP=N=FP=C=0
    for g in ok:
        ms=groups[g]; clean=[c for c in ms if M[c]['t'] is None]
        for m in ms:
            R=[c for c in clean if c!=m]
            s,k=score_with(m,R,det,mode)
            rs=[score_with(r,[c for c in R if c!=r],det,mode)[0] for r in R]
            if rule=='max': thr=max(rs)
            elif rule=='max*1.2': thr=max(rs)+0.2*abs(max(rs))
            else: thr=st.mean(rs)+3*st.pstdev(rs)
            fl=s>thr
            if M[m]['t'] is None: C+=1; FP+=fl
            else: N+=1; TP+=(fl and k==M[m]['t'])
    print(f"{det:6s} {mode} {rule:9s}: TPR {TP}/{N} = {TP/N:.2f}, FPR {FP}/{C} = {FP/C:.2f}")
print("--- fixed thresholds, no references")
for det,thr in [('agree',0.912),('cepa',1.5),('nc',2.0)]:
    TP=N=FP=C=0
    for g in ok:
        for m in groups[g]:
            s,k=score_with(m,[],det,'raw')
            fl=s>thr
            if M[m]['t'] is None: C+=1; FP+=fl
            else: N+=1; TP+=(fl and k==M[m]['t'])
    print(f"{det} > {thr}: TPR {TP}/{N} = {TP/N:.2f}, FPR {FP}/{C} = {FP/C:.2f}")
print("--- agree with CEPA subtracted, NC raw")
def mixed(m,refs):
    v=M[m]
    a={k:min(v['a'][k],3.0)-(st.mean(min(M[c]['a'][k],3.0) for c in refs) if refs else 0) for k in v['a']}
    b=dict(v['b'])
    ka=max(a,key=a.get); kb=max(b,key=b.get); rc=a[ka]/1.5; rn=b[kb]/2.0
    if ka==kb: return max((rc+rn)/2,max(rc,rn)/1.5),ka
    return max(rc,rn)/1.5,(ka if rc>=rn else kb)
for rule in ['oracle','max*1.2','fixed0.912','fixed0.8']:
    TP=N=FP=C=0
    for g in ok:
        ms=groups[g]; clean=[c for c in ms if M[c]['t'] is None]
        sc={m:mixed(m,[c for c in clean if c!=m]) for m in ms}
        for m in ms:
            R=[c for c in clean if c!=m]
            s,k=sc[m]
            if rule=='oracle': thr=max(sc[c][0] for c in clean)
            elif rule=='max*1.2':
                rs=[mixed(r,[c for c in R if c!=r])[0] for r in R]; thr=max(rs)*1.2
            else: thr=float(rule[5:])
            fl=s>thr if rule!='oracle' else (s>thr)
            if M[m]['t'] is None: C+=1; FP+=(fl if rule!='oracle' else 0)
            else: N+=1; TP+=(fl and k==M[m]['t'])
    print(f"{rule}: TPR {TP}/{N} = {TP/N:.2f}, FPR {FP}/{C} = {FP/C:.2f}")

print("--- CEPA flags (index over 1.5): the rank of the flagged class among the references' means")
from collections import Counter
ranks = {"clean models (false alarms)": Counter(), "backdoors, right target": Counter(),
         "backdoors, wrong class": Counter()}
for g in ok:
    clean = [c for c in groups[g] if M[c]['t'] is None]
    for m in groups[g]:
        v = M[m]; a = {k: min(x, 3.0) for k, x in v['a'].items()}
        k = max(a, key=a.get)
        if a[k] <= 1.5:
            continue
        R = [c for c in clean if c != m]
        means = {j: st.mean(min(M[c]['a'][j], 3.0) for c in R) for j in a}
        rank = 1 + sum(1 for j in means if means[j] > means[k])
        key = ("clean models (false alarms)" if v['t'] is None else
               "backdoors, right target" if v['t'] == k else "backdoors, wrong class")
        ranks[key][rank] += 1
for key, c in ranks.items():
    print(f"{key}: " + ", ".join(f"rank {r}: {n}" for r, n in sorted(c.items())))

print("--- `agree` at 0.912 with the references' first class silenced (its index set to at most 0)")
def agree_of(a, b):
    ka = max(a, key=a.get); kb = max(b, key=b.get); rc = a[ka] / 1.5; rn = b[kb] / 2.0
    if ka == kb:
        return max((rc + rn) / 2, max(rc, rn) / 1.5), ka
    return max(rc, rn) / 1.5, (ka if rc >= rn else kb)
for variant in ['default', "CEPA's", "both detectors'"]:
    TP = N = FP = C = 0
    for g in ok:
        clean = [c for c in groups[g] if M[c]['t'] is None]
        for m in groups[g]:
            v = M[m]; R = [c for c in clean if c != m]
            a = {k: min(x, 3.0) for k, x in v['a'].items()}; b = dict(v['b'])
            if variant != 'default':
                ma = {j: st.mean(min(M[c]['a'][j], 3.0) for c in R) for j in a}
                r1 = max(ma, key=ma.get); a[r1] = min(a[r1], 0.0)
                if variant.startswith('both'):
                    mb = {j: st.mean(M[c]['b'][j] for c in R) for j in b}
                    r1 = max(mb, key=mb.get); b[r1] = min(b[r1], 0.0)
            s, k = agree_of(a, b); fl = s > 0.912
            if v['t'] is None: C += 1; FP += fl
            else: N += 1; TP += (fl and k == v['t'])
    print(f"{variant}: TPR {TP}/{N} = {TP/N:.2f}, FPR {FP}/{C} = {FP/C:.2f}")
