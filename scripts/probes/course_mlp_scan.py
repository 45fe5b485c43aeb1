"""Scan every model that course_mlp_probe.py wrote with the default `cepa scan` (both detectors,
`agree`) and print one table row per model: its poisoned-image count and attack success, the
verdict and class, each detector's most anomalous class and score, and how many classes CEPA's
optimisation never carried 90 % of the images to.
    python3 scripts/probes/course_mlp_scan.py OUT_DIR [CEPA_BINARY]"""
import json, os, subprocess, sys

out = sys.argv[1]
cepa = sys.argv[2] if len(sys.argv) > 2 else 'target/release/cepa'
rows = [json.loads(l) for l in open(os.path.join(out, 'models.jsonl'))]
print('| model | poisoned | attack success | verdict (class, score) | CEPA: class, score | NC: class, score | classes CEPA never reached |')
print('|---|---|---|---|---|---|---|')
for r in sorted(rows, key=lambda r: (r['poisoned'], r['seed'])):
    onnx = os.path.join(out, r['model'] + '.onnx')
    js = os.path.join(out, r['model'] + '.scan.json')
    if not os.path.exists(js):
        with open(js, 'w') as f:
            subprocess.run([cepa, 'scan', onnx, '--data', os.environ.get('MNIST', '../shared/data/mnist'),
                            '--format', 'json', '-q'], stdout=f, check=False)
    d = json.load(open(js))
    c, nc = d['combined'], d['baseline_nc']
    unreached = sum(not k['feasible'] for k in d['decision']['classes'])
    verdict = f"{d['verdict']} ({d['target'] if d['target'] is not None else c['most_anomalous']}, {d['score']:.2f})"
    print(f"| {r['model']} | {r['poisoned']} | {r['attack_success']:.2f} | {verdict} | "
          f"{d['cepa']['most_anomalous']}, {d['cepa']['score']:.2f} | {nc['most_anomalous']}, {nc['score']:.2f} | {unreached} |")
