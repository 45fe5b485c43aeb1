# Offline analysis only (no verdict is computed for users here): the `agree` score if a pair of
# voices counted at any class by the voices' own indices at that class, not only at their tops.
import json,glob,os,sys
def load(d):
    out={}
    for f in glob.glob(f'{d}/reports/cepa/*.json'):
        m=os.path.basename(f)[:-5]
        c=json.load(open(f)); 
        try: n=json.load(open(f'{d}/reports/nc/{m}.json'))
        except: continue
        res=[json.loads(l) for l in open(f'{d}/results.jsonl') if f'"model":"{m}"' in l]
        t=res[0]['truth_target'] if res else None
        k=len(c['decision']['classes'])
        ci=[max(0,x['anomaly_index']) for x in c['decision']['classes']]
        ni=[max(0,x['anomaly_index']) for x in n['classes']]
        s=c.get('stimulation')
        si=[max(0,x) for x in s['indices']] if s else [0]*k
        cthr=c['decision']['threshold']; nthr=n.get('threshold') or 2.0
        out[m]=(t,k,ci,ni,si,cthr)
    return out
def scores(ci,ni,si,cthr,nthr,sthr,lone=1.5):
    k=len(ci)
    rel=[[x/cthr for x in ci],[x/nthr for x in ni],[x/sthr for x in si]]
    tops=[max(range(k),key=lambda i:r[i]) for r in rel]
    # current: pairs at same top
    cur=(max(max(r) for r in rel)/lone, max(range(k),key=lambda i:max(r[i] for r in rel)))
    for a in range(3):
        for b in range(a+1,3):
            if tops[a]==tops[b]:
                v=(rel[a][tops[a]]+rel[b][tops[b]])/2
                if v>cur[0]: cur=(v,tops[a])
    # support: at every class, the mean of the best two voices there
    sup=cur
    for c in range(k):
        vs=sorted([r[c] for r in rel],reverse=True)
        v=(vs[0]+vs[1])/2
        if v>sup[0]: sup=(v,c)
    return cur,sup
for d in sys.argv[1:]:
    data=load(d)
    for m,(t,k,ci,ni,si,cthr) in sorted(data.items()):
        nthr=2.0 if k==10 else None
        if nthr is None: continue
        cur,sup=scores(ci,ni,si,cthr,nthr,8.0)
        flag=lambda s: f"{s[0]:.2f}@{s[1]}{'*' if s[0]>0.978 else ''}"
        print(f"{m:36s} t={t} cur={flag(cur)} sup={flag(sup)}")
