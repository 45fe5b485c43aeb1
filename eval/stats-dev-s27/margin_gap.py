#!/usr/bin/env python3
"""Session 27, development only (no verdict is computed and no rule is chosen here): how far
the largest `margin_excess` anomaly index of a scan stands above its second largest, on every
saved development scan: target/pool-s23 (74 scans; rebuild with `bash
eval/stats-dev-s23/merge.sh`), the CIFAR-10 standard zoo of session 23 (34), judge-s25 (10) and
the realistic CPU group (2). Every one of them holds `margin_excess` values; the indices are
the ones `cepa eval --rescore` writes into each re-decided report (session 28: the script
computed them itself before, as `detect::verdict` does; the output is the same), so the rule's
arithmetic lives in the Rust code alone. Needs the release binary (cargo build --release -p
cepa-cli); the re-decided folders go to target/margin-gap/.
Prints one line per scan, then per dataset how many backdoored scans (largest at the true
target) and clean scans have a gap over each cut, and the leave-one-dataset-out reading (the
cut = the largest clean gap of the other datasets).
    python3 eval/stats-dev-s27/margin_gap.py
"""
import json, os, subprocess

# population: (saved scans, the manifest they were scanned from)
POPS = {
    'pool-s23': ('target/pool-s23', 'target/pool-s23/manifest.json'),
    'standard-cifar10-s23': ('eval/standard-cifar10-s23',
                             'eval/zoo-standard-cifar10-s23-manifest.json'),
    'judge-s25': ('eval/judge-s25', 'eval/zoo-judge-s25-manifest.json'),
    'realistic-cpu-s25': ('eval/realistic-cpu-s25', 'eval/zoo-realistic-s26-manifest.json'),
}
CUTS = [1.0, 2.0, 3.0, 5.0]
CEPA = 'target/release/cepa'


def rescored(pop, saved, manifest):
    """The population decided again under the default rule, read from OUT (its indices are
    computed for every statistic, chosen or not)."""
    for f in (saved, manifest, CEPA):
        if not os.path.exists(f):
            raise SystemExit(f'{f} is missing (see the docstring)')
    out = os.path.join('target/margin-gap', pop)
    subprocess.run([CEPA, 'eval', manifest, '--rescore', '--from', saved, '--out', out, '-q'],
                   stdout=subprocess.DEVNULL,
                   check=True)
    return out


def scans():
    for pop, (saved, manifest) in POPS.items():
        d = rescored(pop, saved, manifest)
        truth = {}
        for line in open(os.path.join(d, 'results.jsonl')):
            r = json.loads(line)
            if r['detector'] == 'cepa':
                truth[r['model']] = r
        for m, r in sorted(truth.items()):
            rep = json.load(open(os.path.join(d, 'reports/cepa', m + '.json')))
            assert 'rescored' in rep, m
            classes = rep['decision']['classes']
            idx = [next(s for s in c['statistics'] if s['statistic'] == 'margin_excess')
                   ['anomaly_index'] for c in classes]
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
