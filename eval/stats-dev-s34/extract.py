"""Session 34: the per-class anomaly indices of every saved development scan with both
detectors' reports (the 13 evaluations of eval/stats-dev-s33/groups.txt, 301 models), with each
model's default `agree` score from session 33's rescore, into target/s34/classes.json for
learn.py. Backdoors under an attack success of 0.9 are left out, as everywhere.
    python3 eval/stats-dev-s34/extract.py"""
import json, os, collections

STATS = ['delta_norm', 'embed_norm', 'transfer', 'margin_excess', 'max_margin', 'input_reach',
         'input_reach_max', 'reach', 'mu_norm', 'dispersion', 'coherence', 'input_transfer',
         'pair_delta', 'universal_norm', 'local_margin', 'margin_blend', 'margin_patch']
rows = []
for line in open('eval/stats-dev-s33/groups.txt'):
    group, manifest = line.split()[:2]
    man = {m['id']: m for m in json.load(open(manifest))['models']}
    res = {}
    agree = {}
    for l in open(f'eval/stats-dev-s33/default/{group}/combined.jsonl'):
        r = json.loads(l)
        if r['detector'] == 'cepa-nc-agree':
            agree[r['model']] = (r['score'], r['most_anomalous'])
    for l in open(f'eval/{group}/results.jsonl'):
        r = json.loads(l)
        res.setdefault(r['model'], {})[r['detector']] = r
    for mid, dets in res.items():
        if 'cepa' not in dets or 'nc' not in dets:
            continue
        m = man.get(mid)
        if m is None:
            continue
        truth = dets['cepa']['truth_target']
        asr = m.get('attack_success_rate')
        if truth is not None and (asr is None or asr < 0.9):
            continue
        cp = f'eval/{group}/reports/cepa/{mid}.json'
        npth = f'eval/{group}/reports/nc/{mid}.json'
        if not (os.path.exists(cp) and os.path.exists(npth)):
            continue
        c = json.load(open(cp))
        n = json.load(open(npth))
        ncidx = {k['target']: k['anomaly_index'] for k in n['classes']}
        classes = []
        for k in c['decision']['classes']:
            f = collections.defaultdict(list)
            for s in k['statistics']:
                if s['anomaly_index'] is not None:
                    f[s['statistic']].append(s['anomaly_index'])
            feat = {s: (max(f[s]) if f[s] else None) for s in STATS}
            feat['mean_stat'] = {s: (sum(f[s]) / len(f[s]) if f[s] else None) for s in STATS}
            classes.append(dict(cls=k['class'], cepa=k['anomaly_index'], mean_index=k['mean_index'],
                                nc=ncidx.get(k['class']), **{s: feat[s] for s in STATS}))
        rows.append(dict(group=group, model=mid, dataset=m['dataset'], arch=m.get('arch'),
                         attack=m.get('attack'), truth=truth, cepa_score=dets['cepa']['score'],
                         nc_top=n['most_anomalous'], nc_score=n['score'],
                         cepa_top=c['decision']['most_anomalous'], agree=agree.get(mid), classes=classes))
json.dump(rows, open('target/s34/classes.json', 'w'))
cnt = collections.Counter((r['dataset'], r['truth'] is None) for r in rows)
print(len(rows), sorted(cnt.items()))
