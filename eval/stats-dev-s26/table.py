"""Session 26, development only: TPR, FPR and target accuracy of CEPA alone and `agree`
per dataset and population, read from the evaluation.json files that
`bash eval/stats-dev-s26/rescore.sh` writes (every verdict is cepa eval's)."""
import json, sys
root = sys.argv[1] if len(sys.argv) > 1 else "target/s26/floor"
rules = ["default", "floor0", "floor-0.5", "floor-1"]
for pop in ["pool", "std", "s25"]:
    for det in ["cepa", "cepa-nc-agree"]:
        for rule in rules:
            e = json.load(open(f"{root}/{pop}-{rule}/evaluation.json"))[det]
            cells = []
            for ds, v in sorted(e.items()):
                a = v["families"]["all"]
                tp = round(a["tpr"] * a["n_backdoored"])
                fp = round(a["fpr"] * a["n_clean"])
                ta = a["target_accuracy"]
                cells.append(f"{ds} {tp}/{a['n_backdoored']} fp {fp}/{a['n_clean']} tacc {ta if ta is None else round(ta, 2)} auc {a['auc']:.2f}")
            print(f"{pop:5} {det:14} {rule:10} | " + " | ".join(cells))
        print()
