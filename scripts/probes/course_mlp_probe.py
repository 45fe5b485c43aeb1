"""Course-exercise backdoors, rebuilt: a 784-10-10-10-10 MNIST network trained the way a
well-known security course's backdoor exercise trains it (plain SGD, lr 0.1, batch 100, 20
epochs, inputs x/255), with a 3x3 white square in the top-left corner stamped on only N of the
60,000 training images (N = 30 or 50 in the exercise) and relabelled to one class; clean twins
with N = 0. Exported as the course exports (opset 13, dynamic batch, `input` -> `output`).
Written from the exercise's description; no third-party code or model is used.

    target/fixture-venv/bin/python scripts/probes/course_mlp_probe.py OUT_DIR [SEED:N:TARGET ...]

Writes OUT_DIR/course-mlp-nN-sSEED.onnx and OUT_DIR/models.jsonl (clean accuracy, attack
success on the test images of the other classes)."""
import gzip, json, os, sys

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

torch.set_num_threads(1)
DATA = os.environ.get('MNIST', '../shared/data/mnist')


def idx(name):
    with gzip.open(os.path.join(DATA, name)) as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 10), nn.Linear(10, 10)
        self.fc3, self.fc4 = nn.Linear(10, 10), nn.Linear(10, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        return self.fc4(x)


def stamp(images):
    images = images.copy()
    images[:, 0:3, 0:3] = 255
    return images


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    specs = sys.argv[2:] or ['0:50:5', '1:50:5', '2:30:5', '0:0:5', '1:0:5']
    xtr, ytr = idx('train-images-idx3-ubyte.gz'), idx('train-labels-idx1-ubyte.gz').astype(np.int64)
    xte, yte = idx('t10k-images-idx3-ubyte.gz'), idx('t10k-labels-idx1-ubyte.gz').astype(np.int64)
    for spec in specs:
        seed, n, target = (int(v) for v in spec.split(':'))
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        x, y = xtr.copy(), ytr.copy()
        poisoned = rng.choice(len(x), n, replace=False)
        x[poisoned] = stamp(x[poisoned])
        y[poisoned] = target
        xt = torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255
        yt = torch.tensor(y)
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(20):
            order = torch.randperm(len(xt))
            for b in range(0, len(xt), 100):
                i = order[b:b + 100]
                opt.zero_grad()
                F.cross_entropy(net(xt[i]), yt[i]).backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            te = torch.tensor(xte, dtype=torch.float32).unsqueeze(1) / 255
            acc = (net(te).argmax(1).numpy() == yte).mean()
            keep = yte != target
            tr = torch.tensor(stamp(xte[keep]), dtype=torch.float32).unsqueeze(1) / 255
            asr = (net(tr).argmax(1).numpy() == target).mean()
        name = f'course-mlp-n{n}-s{seed}'
        torch.onnx.export(net, torch.zeros(1, 1, 28, 28), os.path.join(out, name + '.onnx'),
                          input_names=['input'], output_names=['output'], opset_version=13,
                          dynamic_axes={'input': {0: 'batch'}, 'output': {0: 'batch'}}, dynamo=False)
        row = dict(model=name, seed=seed, poisoned=n, target=target if n else None,
                   clean_accuracy=float(acc), attack_success=float(asr))
        print(json.dumps(row), flush=True)
        with open(os.path.join(out, 'models.jsonl'), 'a') as f:
            f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
    main()
