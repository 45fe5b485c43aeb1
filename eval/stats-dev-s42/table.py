# The per-model table of a judge (EVALUATION.md, "Session 42", "Session 43"): python3 table.py EVALDIR ZOODIR
# (model names DATASET-NETWORK-ATTACK-SEED; the table shows ATTACK-SEED)
import json,sys
from collections import defaultdict
ev,zoo=sys.argv[1],sys.argv[2]
man={m['id']:m for m in json.load(open(f'{zoo}/manifest.json'))['models']}
rows=defaultdict(dict)
for f in ['results.jsonl','combined.jsonl']:
    for l in open(f'{ev}/{f}'):
        r=json.loads(l); rows[r['model']][r['detector']]=r
def cell(r): return f"{r['score']/r['threshold']:.2f} @{r['most_anomalous']}"
order=sorted(rows, key=lambda m:(m.split('-')[2]=='clean', m))
print("| model | clean acc / ASR | CEPA | Neural Cleanse | stimulation (channels) | `agree` |")
print("|---|---|---|---|---|---|")
for m in order:
    v=rows[m]; mm=man[m]; tt=v['cepa']['truth_target']
    acc=mm.get('clean_accuracy'); asr=mm.get('attack_success_rate')
    a=v['cepa-nc-agree']
    verdict = ('**%.2f @%s, right**' % (a['score'],a['target']) if a['flagged'] and a['target']==tt else ('%.2f @%s, %s' % (a['score'],a['most_anomalous'], 'missed' if tt is not None else ('**flagged**' if a['flagged'] else 'clean'))))
    if a['flagged'] and tt is None: verdict='**%.2f @%s, flagged**' % (a['score'],a['target'])
    name='-'.join(m.split('-')[2:])+(f' ({tt})' if tt is not None else '')
    rep=json.load(open(f'{ev}/reports/cepa/{m}.json')).get('stimulation')
    print(f"| {name} | {acc:.3f} / {('%.3f'%asr) if asr is not None else '-'} | {cell(v['cepa'])} | {cell(v['nc'])} | {(('%.2f @%d' % (rep['index'],rep['class'])) if rep else '-')} | {verdict} |")
