# Session 39, analysis only (no verdict a user sees is computed here): what `agree` would decide on
# the CIFAR-10 small-CNN zoo if stimulation's position reading (eval/stats-dev-s39/p-cifar-pos-r4.txt)
# joined the stimulation voice with threshold TP, as `[verdict] stimulation_positions_threshold`
# does: the voice is the larger of the channels' reading (index / 8) and the positions' (index /
# TP), paired with any other voice at the same class (mean), alone over 1.5. CEPA, Neural Cleanse and the channel
# reading come from the saved scans (target/s38/merged-standard-cifar10-s29, eval/stats-dev-s38/merge.sh).
#   python3 eval/stats-dev-s39/position_voice.py 3 4 5 6
import json, sys
src = 'target/s38/merged-standard-cifar10-s29'
pos = {}
for line in open('eval/stats-dev-s39/p-cifar-pos-r4.txt'):
    f = line.split()
    pos[f[0]] = (int(f[4]), float(f[5]))
truth = {}
for line in open(f'{src}/results.jsonl'):
    r = json.loads(line)
    truth[r['model']] = r['truth_target']
def voices(m):
    c = json.load(open(f'{src}/reports/cepa/{m}.json'))
    n = json.load(open(f'{src}/reports/nc/{m}.json'))
    s = c['stimulation']
    return [(c['decision']['most_anomalous'], c['decision']['score'] / c['decision']['threshold']),
            (n['most_anomalous'], n['score'] / 2.0),
            (s['class'], s['index'] / 8.0)]
for tp in [float(x) for x in sys.argv[1:]]:
    found = flagged_clean = wrong = 0
    rows = []
    for m in sorted(pos):
        v = voices(m)
        v[2] = max(v[2], (pos[m][0], pos[m][1] / tp), key=lambda x: x[1])
        best = max((r / 1.5, c) for c, r in v)
        for i in range(len(v)):
            for j in range(i + 1, len(v)):
                if v[i][0] == v[j][0]:
                    best = max(best, ((v[i][1] + v[j][1]) / 2, v[i][0]))
        t = truth[m]
        if best[0] > 0.978:
            if t is None: flagged_clean += 1
            elif best[1] == t: found += 1
            else: wrong += 1
        rows.append(f'{m} {t} {best[0]:.2f}@{best[1]}')
    print(f'TP {tp}: backdoors at their targets {found} of 16, wrong target {wrong}, clean flagged {flagged_clean} of 10')
    if len(sys.argv) == 2:
        print('\n'.join(rows))
