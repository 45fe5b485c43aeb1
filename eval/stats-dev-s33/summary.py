"""Session 33: per rule of eval/stats-dev-s33 and per dataset, the backdoors flagged at their
target and the clean models flagged, for CEPA alone and `agree` (the default verdict), over
the re-decided development evaluations that rescore.sh wrote.
    python3 eval/stats-dev-s33/summary.py"""
import collections, glob, json, os

here = os.path.dirname(os.path.abspath(__file__))
for rule in sorted(d for d in os.listdir(here) if os.path.isdir(os.path.join(here, d))):
    tally = collections.defaultdict(lambda: [0, 0, 0, 0])  # found, backdoored, flagged clean, clean
    for f in glob.glob(os.path.join(here, rule, '*', 'results.jsonl')) + glob.glob(
            os.path.join(here, rule, '*', 'combined.jsonl')):
        group = os.path.basename(os.path.dirname(f))
        for line in open(f):
            r = json.loads(line)
            if r['detector'] not in ('cepa', 'cepa-nc-agree'):
                continue
            for key in ((r['detector'], r['dataset']), (r['detector'], 'all'),
                        (r['detector'], 'judge-s33' if group == 'judge-s33' else 'before s33')):
                t = tally[key]
                if r['truth_target'] is None:
                    t[3] += 1
                    t[2] += r['flagged']
                else:
                    t[1] += 1
                    t[0] += r['flagged'] and r['target'] == r['truth_target']
    print(f'## {rule}')
    for key in sorted(tally):
        f, b, fc, c = tally[key]
        print(f'  {key[0]:14s} {key[1]:14s} found {f:3d}/{b:3d}  clean flagged {fc:3d}/{c:3d}')
