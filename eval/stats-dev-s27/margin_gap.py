#!/usr/bin/env python3
"""Session 27, development only (no verdict is computed and no rule is chosen here): how far
the largest `margin_excess` anomaly index of a scan stands above its second largest, on every
saved development scan: target/pool-s23 (74 scans; rebuild with `bash
eval/stats-dev-s23/merge.sh`), the CIFAR-10 standard zoo of session 23 (34), judge-s25 (10) and
the realistic CPU group (2). Every one of them holds `margin_excess` values; scans made before
the statistic had an index keep the value only, so the index is computed here as
`detect::verdict` computes it (a MAD index over the feasible classes, large tail; infeasible
classes get the smallest) and checked against the saved index wherever there is one.
Prints one line per scan, then per dataset how many backdoored scans (largest at the true
target) and clean scans have a gap over each cut, and the leave-one-dataset-out reading (the
cut = the largest clean gap of the other datasets).
    python3 eval/stats-dev-s27/margin_gap.py
"""
import json, os, statistics

POPS = {
    'pool-s23': 'target/pool-s23',
    'standard-cifar10-s23': 'eval/standard-cifar10-s23',
    'judge-s25': 'eval/judge-s25',
    'realistic-cpu-s25': 'eval/realistic-cpu-s25',
}
CUTS = [1.0, 2.0, 3.0, 5.0]


def mad_indices(values, feasible):
    """`stats::anomaly_indices` (large tail, no relative floor) over the feasible classes."""
    v = [x for x, f in zip(values, feasible) if f]
    centre = statistics.median(v)
    mad = statistics.median([abs(x - centre) for x in v])
    scale = 1.4826 * mad if mad > 0 else 1.2533 * sum(abs(x - centre) for x in v) / len(v)
    scale = max(scale, 1e-12 * max(abs(centre), 1.0))
    out = [(x - centre) / scale if f else None for x, f in zip(values, feasible)]
    least = min(o for o in out if o is not None)
    return [least if o is None else o for o in out]


def scans():
    for pop, d in POPS.items():
        if not os.path.isdir(d):
            raise SystemExit(f'{d} is missing (see the docstring)')
        truth = {}
        for line in open(os.path.join(d, 'results.jsonl')):
            r = json.loads(line)
            if r['detector'] == 'cepa':
                truth[r['model']] = r
        for m, r in sorted(truth.items()):
            rep = json.load(open(os.path.join(d, 'reports/cepa', m + '.json')))
            classes = rep['decision']['classes']
            me = [next(s for s in c['statistics'] if s['statistic'] == 'margin_excess')
                  for c in classes]
            idx = mad_indices([s['value'] for s in me], [c['feasible'] for c in classes])
            for s, i in zip(me, idx):
                if s.get('anomaly_index') is not None:
                    assert abs(s['anomaly_index'] - i) < 1e-6, (m, s, i)
            order = sorted(range(len(idx)), key=lambda k: -idx[k])
            yield dict(pop=pop, model=m, dataset=r['dataset'], attack=r['attack'],
                       truth=r['truth_target'], top=order[0], first=idx[order[0]],
                       gap=idx[order[0]] - idx[order[1]])


def main():
    rows = list(scans())
    print('dataset attack truth top largest gap population model')
    for x in sorted(rows, key=lambda x: (x['dataset'], x['attack'] == 'clean', -x['gap'])):
        print(x['dataset'], x['attack'], x['truth'], x['top'], f"{x['first']:.2f}",
              f"{x['gap']:.2f}", x['pop'], x['model'])
    datasets = sorted({x['dataset'] for x in rows})
    found = lambda xs, c: sum(1 for x in xs if x['attack'] != 'clean' and x['top'] == x['truth'] and x['gap'] > c)
    alarms = lambda xs, c: sum(1 for x in xs if x['attack'] == 'clean' and x['gap'] > c)
    print('\ndataset | backdoored (largest at the target) | clean | ' +
          ' | '.join(f'gap > {c:g}: found / clean' for c in CUTS))
    for ds in datasets:
        xs = [x for x in rows if x['dataset'] == ds]
        bd = [x for x in xs if x['attack'] != 'clean']
        right = sum(1 for x in bd if x['top'] == x['truth'])
        print(f'{ds} | {len(bd)} ({right}) | {len(xs) - len(bd)} | ' +
              ' | '.join(f'{found(xs, c)} / {alarms(xs, c)}' for c in CUTS))
    print('\nleft out | cut (largest clean gap of the others) | found | clean flagged')
    for ds in datasets:
        cut = max(x['gap'] for x in rows if x['dataset'] != ds and x['attack'] == 'clean')
        xs = [x for x in rows if x['dataset'] == ds]
        nb = sum(1 for x in xs if x['attack'] != 'clean')
        print(f'{ds} | {cut:.2f} | {found(xs, cut)} of {nb} | {alarms(xs, cut)} of {len(xs) - nb}')


if __name__ == '__main__':
    main()
