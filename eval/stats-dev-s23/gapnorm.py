import json, numpy as np, glob, os, sys
man={x['id']:x for x in json.load(open('target/pool-s22b/manifest.json'))['models']}
L={}
for l in open('target/s23/logits.jsonl'):
    r=json.loads(l); L[r['model']]=(np.array(r['labels']),np.array(r['logits']))
def idx(v,tail):
    v=np.asarray(v,float); med=np.nanmedian(v); mad=1.4826*np.nanmedian(abs(v-med))
    z=(v-med)/max(mad,1e-12)
    return -z if tail=='small' else z
def stat(n,r,kind):
    cl=r['decision']['classes']; K=len(cl)
    dn=np.array([next(s['value'] for s in c['statistics'] if s['statistic']=='delta_norm') for c in cl])
    y,lg=L[n]
    gap=np.zeros(K); p=np.zeros(K)
    for t in range(K):
        o=lg[y!=t]; others=np.max(np.delete(o,t,axis=1),1)
        g=np.maximum(others-o[:,t],0)
        gap[t]=np.mean(g) if kind!='median' else np.median(g)
    if kind=='dn': return idx(dn,'small')
    if kind=='gap': return idx(gap,'small')
    return idx(dn/gap,'small')
for kind in ['dn','gap','ratio','median']:
    out=[]
    for ds in ['cifar10','mnist','fashion-mnist']:
        cm=[];bt=[];rk=[];c9=[]
        for f in glob.glob('target/pool-s22b/reports/cepa/*.json'):
            n=os.path.basename(f)[:-5]; x=man[n]
            if x['dataset']!=ds or n not in L: continue
            v=stat(n,json.load(open(f)),kind)
            if x['attack']=='clean': cm.append(v.max())
            elif (x.get('attack_success_rate') or 0)>=0.9:
                t=x['target']; bt.append(v[t]); rk.append(int(np.argmax(v))==t)
        m=max(cm); bt=np.array(bt)
        out.append(f"{ds[:5]}: clean max {m:5.2f} (2nd {sorted(cm)[-2]:5.2f}) bd>{(bt>m).sum()}/{len(bt)} top1 {sum(rk)} med {np.median(bt):5.2f}")
    print(f"{kind:7s}", ' | '.join(out))
