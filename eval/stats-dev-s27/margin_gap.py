#!/usr/bin/env python3
"""Session 27, development only (no verdict is computed here, no rule is chosen): how far the
largest `margin_excess` anomaly index of a scan stands above its second largest, on every saved
development scan that measured `margin_excess` (session 21 on): target/pool-s23 (rebuild with
`bash eval/stats-dev-s23/merge.sh`), the CIFAR-10 standard zoo of session 23, judge-s25 and the
realistic CPU group. Prints one line per scan, then per dataset how many backdoored scans (top
class = the true target) and clean scans have a gap over each cut.
    python3 eval/stats-dev-s27/margin_gap.py
"""
import json, os

POPS = {
    'pool-s23': 'target/pool-s23',
    'standard-cifar10-s23': 'eval/standard-cifar10-s23',
    'judge-s25': 'eval/judge-s25',
    'realistic-cpu-s25': 'eval/realistic-cpu-s25',
}
CUTS = [0.5, 1.0, 1.5, 2.0, 3.0]


def scans():
    for pop, d in POPS.items():
        if not os.path.isdir(d):
            print(f'# {d} missing, skipped')
            continue
        truth = {}
        for line in open(os.path.join(d, 'results.jsonl')):
            r = json.loads(line)
            if r['detector'] == 'cepa':
                truth[r['model']] = r
        for m, r in sorted(truth.items()):
            rep = json.load(open(os.path.join(d, 'reports/cepa', m + '.json')))
            me = {}
            for c in rep['decision']['classes']:
                for s in c['statistics']:
                    if s['statistic'] == 'margin_excess' and s.get('anomaly_index') is not None:
                        me[c['class']] = s['anomaly_index']
            if len(me) < 2:
                continue
            order = sorted(me, key=me.get, reverse=True)
            yield dict(pop=pop, model=m, dataset=r['dataset'], attack=r['attack'],
                       truth=r['truth_target'], top=order[0], first=me[order[0]],
                       second=me[order[1]])


def main():
    rows = list(scans())
    print('dataset attack truth top first second gap population model')
    for x in sorted(rows, key=lambda x: (x['dataset'], x['attack'] == 'clean', x['second'] - x['first'])):
        print(x['dataset'], x['attack'], x['truth'], x['top'], f"{x['first']:.2f}",
              f"{x['second']:.2f}", f"{x['first'] - x['second']:.2f}", x['pop'], x['model'])
    print()
    print('dataset | backdoored (top = target) | clean | ' +
          ' | '.join(f'gap > {c}: found / clean' for c in CUTS))
    for ds in sorted({x['dataset'] for x in rows}):
        bd = [x for x in rows if x['dataset'] == ds and x['attack'] != 'clean']
        cl = [x for x in rows if x['dataset'] == ds and x['attack'] == 'clean']
        right = [x for x in bd if x['top'] == x['truth']]
        cells = []
        for c in CUTS:
            f = sum(1 for x in right if x['first'] - x['second'] > c)
            a = sum(1 for x in cl if x['first'] - x['second'] > c)
            cells.append(f'{f} / {a}')
        print(f'{ds} | {len(bd)} ({len(right)}) | {len(cl)} | ' + ' | '.join(cells))


if __name__ == '__main__':
    main()
