"""Train one CIFAR-10 backdoor victim with PyTorch (BackdoorBench's CIFAR recipe) and export it.

One model per process (`--model torch-{family}-s{seed}`, family in clean, badnets, blend, wanet,
sig); the launcher (scripts/device/gpu_torch_population.sh) runs the ten side by side on one GPU
and then this script with `--manifest` to gather them. Nothing is downloaded.

Data: `--data DIR` holds CIFAR-10 binary records, gzipped: every `data_batch_*.bin.gz` (train,
sorted by name) and `test_batch.bin.gz` (test); a record is one label byte and 3072 image bytes
(CHW: R, G, B planes of 32x32, row-major). `--limit-train N` keeps the first N training records.

Network: PreAct-ResNet-18 (Kuang Liu's / BackdoorBench's PreActResNet18, channel widths W, 2W,
4W, 8W with W = `--width`): conv3x3(3, W) stem, four stages of two PreActBlocks (bn-relu-conv3x3-
bn-relu-conv3x3, a 1x1 conv shortcut on the pre-activated input when the stride or width
changes; strides 1, 2, 2, 2), then BatchNorm + ReLU, `avg_pool2d(4)`, flatten and a linear layer
to 10 logits. The input is the image in [0, 1], NCHW float32, with no normalisation anywhere.

Training: SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine annealing over the epochs
(stepped per epoch), batch 128, the order shuffled every epoch by a torch.Generator seeded with
the seed, torch.manual_seed(seed) for everything else; per batch on the device: random crop 32
from the image zero-padded by 4 pixels, random horizontal flip. The whole training set lives on
the device as uint8; on CUDA the step runs in bf16 autocast with channels-last memory (float32
on the CPU).

Target class of a backdoored model: `random.Random(seed * 7919 + family_index).randrange(10)`,
family_index being the position of the family in (clean, badnets, blend, wanet, sig). Poisoning
is all-to-one with a rate of 10 %:
  badnets  a 3x3 white patch (1.0) at rows/cols 29-31, on int(0.1 * n) training images drawn
           (numpy RandomState(seed + 1)) from the non-target classes, relabelled to the target,
           before augmentation.
  blend    x' = 0.8 x + 0.2 P, P = numpy RandomState(seed).rand(3, 32, 32) in [0, 1], on
           int(0.1 * n) non-target images (RandomState(seed + 1)), relabelled, before
           augmentation.
  wanet    k = 4, s = 0.5, grid_rescale = 1, noise mode with cross ratio 2 (Nguyen & Tran 2021's
           reference code); the grid from a torch.Generator seeded with the seed. In every batch,
           after augmentation, the first int(0.1 * bs) images are warped with grid_temps and
           relabelled to the target, the next int(2 * that) are warped with grid_temps plus
           uniform noise of +-1/32 (labels kept), the rest stay clean.
  sig      clean-label: v[c, i, j] = 40/255 * sin(2 pi j 6 / 32); min(int(0.1 * n), #target)
           target-class images (RandomState(seed + 1)) get x' = clip(x + v, 0, 1), labels kept,
           before augmentation.
Poisoned training images are stored as uint8 (rounded), as BackdoorBench stores its poisoned
sets; the test triggers for badnets, blend and sig are quantised the same way, WaNet's warp is
applied in float (as in training).

Evaluation: clean accuracy on every test image; attack success rate on the test images whose
label is not the target, with the trigger applied, as the fraction predicted as the target
(null for clean models). Both in float32 with BatchNorm in eval mode.

Outputs in `--out`: `ID.onnx` (opset 13, float32, input "input" (batch, 3, 32, 32), output
"logits", dynamic batch, checked with onnx.checker), `ID.cepa.toml` (mean 0, std 1, logits, 10
classes) and `ID.json` (the zoo manifest entry that `cepa eval` reads, plus images_per_second),
written last. `--manifest` gathers every `*.json` with an "id" in `--out` into
`--out/manifest.json` (sorted by id, images_per_second dropped).
"""
import argparse
import glob
import gzip
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FAMILIES = ("clean", "badnets", "blend", "wanet", "sig")
RATE = 0.1
BATCH = 128
BLEND_ALPHA = 0.2
SIG_DELTA, SIG_FREQ = 40.0, 6
WANET_K, WANET_S, WANET_RESCALE, WANET_CROSS = 4, 0.5, 1.0, 2.0
SPEC = 'mean = [0.0]\nstd = [1.0]\noutput = "logits"\nnum_classes = 10\n'


# ---------------------------------------------------------------- data


def read_records(paths):
    recs = b"".join(gzip.open(p).read() for p in paths)
    a = np.frombuffer(recs, np.uint8)
    if a.size % 3073:
        sys.exit(f"{paths}: {a.size} bytes is not a whole number of 3073-byte records")
    a = a.reshape(-1, 3073)
    return a[:, 1:].reshape(-1, 3, 32, 32).copy(), a[:, 0].astype(np.int64)


def load_cifar(folder):
    train = sorted(glob.glob(os.path.join(folder, "data_batch_*.bin.gz")))
    test = os.path.join(folder, "test_batch.bin.gz")
    if not train or not os.path.isfile(test):
        sys.exit(f"{folder}: expected data_batch_*.bin.gz and test_batch.bin.gz")
    return read_records(train), read_records([test])


def to_u8(x):
    """float images in [0, 1] -> uint8, rounded."""
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- network


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, width=64, num_classes=10):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.in_planes = w[0]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.layer1 = self._make_layer(w[0], 2, 1)
        self.layer2 = self._make_layer(w[1], 2, 2)
        self.layer3 = self._make_layer(w[2], 2, 2)
        self.layer4 = self._make_layer(w[3], 2, 2)
        self.bn = nn.BatchNorm2d(w[3])
        self.linear = nn.Linear(w[3], num_classes)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4)
        out = torch.flatten(out, 1)  # exports as Flatten (no Shape/Gather/Reshape chain)
        return self.linear(out)


# ---------------------------------------------------------------- attacks


def target_of(family, seed):
    if family == "clean":
        return None
    return random.Random(seed * 7919 + FAMILIES.index(family)).randrange(10)


class Attack:
    """Trigger of one family; `apply` maps float images in [0, 1] (N, 3, 32, 32) to triggered
    ones in [0, 1]."""

    def __init__(self, family, seed, target, device):
        self.family, self.target, self.device = family, target, device
        self.params = {"rate": RATE, "mode": "all-to-one", "target": target}
        if family == "badnets":
            self.params.update(patch={"rows": [29, 31], "cols": [29, 31], "size": 3, "value": 1.0})
        elif family == "blend":
            pat = np.random.RandomState(seed).rand(3, 32, 32).astype(np.float32)
            self.pattern = torch.tensor(pat, device=device)
            self.params.update(alpha=BLEND_ALPHA, pattern="numpy RandomState(seed).rand(3,32,32)")
        elif family == "sig":
            j = torch.arange(32, dtype=torch.float32)
            row = (SIG_DELTA / 255.0) * torch.sin(2 * math.pi * j * SIG_FREQ / 32)
            self.signal = row.view(1, 1, 32).expand(3, 32, 32).contiguous().to(device)
            self.params.update(delta=SIG_DELTA, frequency=SIG_FREQ, clean_label=True)
        elif family == "wanet":
            g = torch.Generator().manual_seed(seed)
            ins = torch.rand(1, 2, WANET_K, WANET_K, generator=g) * 2 - 1
            ins = ins / torch.mean(torch.abs(ins))
            noise_grid = F.interpolate(ins, size=32, mode="bicubic", align_corners=True)
            noise_grid = noise_grid.permute(0, 2, 3, 1)
            a = torch.linspace(-1, 1, steps=32)
            xx, yy = torch.meshgrid(a, a, indexing="ij")
            identity_grid = torch.stack((yy, xx), 2)[None, ...]
            grid = (identity_grid + WANET_S * noise_grid / 32) * WANET_RESCALE
            self.grid = torch.clamp(grid, -1, 1).to(device)  # (1, 32, 32, 2)
            self.params.update(k=WANET_K, s=WANET_S, grid_rescale=WANET_RESCALE,
                               cross_ratio=WANET_CROSS, noise_mode=True)

    def apply(self, x):
        if self.family == "badnets":
            x = x.clone()
            x[:, :, 29:32, 29:32] = 1.0
            return x
        if self.family == "blend":
            return (1 - BLEND_ALPHA) * x + BLEND_ALPHA * self.pattern
        if self.family == "sig":
            return (x + self.signal).clamp(0, 1)
        if self.family == "wanet":
            return F.grid_sample(x, self.grid.expand(len(x), -1, -1, -1), align_corners=True)
        raise ValueError(self.family)

    def poison_train(self, x_u8, y, seed):
        """Poison the uint8 training set in place before training (badnets, blend, sig);
        returns the poisoned indices."""
        if self.family not in ("badnets", "blend", "sig"):
            return []
        n = len(y)
        rs = np.random.RandomState(seed + 1)
        yn = y.cpu().numpy()
        if self.family == "sig":
            pool = np.flatnonzero(yn == self.target)
        else:
            pool = np.flatnonzero(yn != self.target)
        count = min(int(RATE * n), len(pool))
        idx = np.sort(rs.choice(pool, count, replace=False))
        ti = torch.tensor(idx, device=x_u8.device, dtype=torch.long)
        for i in range(0, len(ti), 4096):
            b = ti[i : i + 4096]
            x_u8[b] = to_u8(self.apply(x_u8[b].float() / 255))
        if self.family != "sig":
            y[ti] = self.target
        return idx.tolist()

    def wanet_batch(self, x, y):
        """WaNet's per-batch poisoning (after augmentation): the first int(rate * bs) images
        warped and relabelled, the next int(cross_ratio * that) warped with noise."""
        bs = len(x)
        num_bd = int(RATE * bs)
        num_cross = int(num_bd * WANET_CROSS)
        if num_bd == 0:
            return x, y
        num_cross = min(num_cross, bs - num_bd)
        ins = torch.rand(num_cross, 32, 32, 2, device=x.device) * 2 - 1
        grid2 = torch.clamp(self.grid.expand(num_cross, -1, -1, -1) + ins / 32, -1, 1)
        x_bd = F.grid_sample(x[:num_bd], self.grid.expand(num_bd, -1, -1, -1), align_corners=True)
        x_cross = F.grid_sample(x[num_bd : num_bd + num_cross], grid2, align_corners=True)
        x = torch.cat([x_bd, x_cross, x[num_bd + num_cross :]], 0)
        y = torch.cat([torch.full_like(y[:num_bd], self.target), y[num_bd:]], 0)
        return x, y


# ---------------------------------------------------------------- training


def augment(x_u8):
    """Random crop 32 from a 4-pixel zero-padded image and random horizontal flip, on the
    device; uint8 (B, 3, 32, 32) in, float [0, 1] out."""
    b = len(x_u8)
    dev = x_u8.device
    xp = F.pad(x_u8, (4, 4, 4, 4))
    oy = torch.randint(0, 9, (b,), device=dev)
    ox = torch.randint(0, 9, (b,), device=dev)
    ar = torch.arange(32, device=dev)
    rows = (oy[:, None] + ar)[:, None, :, None]  # (B, 1, 32, 1)
    cols = (ox[:, None] + ar)[:, None, None, :]  # (B, 1, 1, 32)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(3, device=dev)[None, :, None, None]
    x = xp[bi, ci, rows, cols].float() / 255
    flip = torch.rand(b, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def predict(net, x, batch=1000):
    """Predicted classes of float32 images x (N, 3, 32, 32) on net's device, in float32."""
    net.eval()
    out = []
    for i in range(0, len(x), batch):
        out.append(net(x[i : i + batch].float()).argmax(1))
    return torch.cat(out)


def train(args):
    try:
        prefix, family, s = args.model.split("-")
        assert prefix == "torch" and family in FAMILIES and s.startswith("s")
        seed = int(s[1:])
    except (ValueError, AssertionError):
        sys.exit(f"--model {args.model}: expected torch-{{{','.join(FAMILIES)}}}-s<seed>")
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(seed)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.set_num_threads(2)  # ten processes share the host's cores; the GPU does the work
    target = target_of(family, seed)
    data_dir = os.path.abspath(args.data)
    (xtr, ytr), (xte, yte) = load_cifar(data_dir)
    if args.limit_train:
        xtr, ytr = xtr[: args.limit_train], ytr[: args.limit_train]
    n = len(ytr)
    print(f"{args.model}: family {family}, seed {seed}, target {target}, {n} train / "
          f"{len(yte)} test images, width {args.width}, {args.epochs} epochs on {dev}", flush=True)

    x_train = torch.tensor(xtr, device=dev)
    y_train = torch.tensor(ytr, device=dev)
    x_test = torch.tensor(xte, device=dev)
    y_test = torch.tensor(yte, device=dev)
    attack = Attack(family, seed, target, dev) if family != "clean" else None
    poisoned = attack.poison_train(x_train, y_train, seed) if attack else []
    if attack:
        print(f"{args.model}: {len(poisoned) if family != 'wanet' else 'per batch'} "
              f"poisoned training images", flush=True)

    net = PreActResNet18(args.width).to(dev)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    shuffle = torch.Generator().manual_seed(seed)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    sync()
    t_train = time.time()
    for ep in range(args.epochs):
        t0 = time.time()
        net.train()
        perm = torch.randperm(n, generator=shuffle).to(dev)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            xb, yb = augment(x_train[idx]), y_train[idx]
            if family == "wanet":
                xb, yb = attack.wanet_batch(xb, yb)
            if cuda:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, torch.bfloat16, enabled=cuda):
                logits = net(xb)
                loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().float() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
        sched.step()
        sync()
        print(f"{args.model}: epoch {ep + 1}/{args.epochs} loss {loss_sum.item() / n:.4f} "
              f"train acc {correct.item() / n:.4f} {time.time() - t0:.1f} s", flush=True)
    sync()
    train_seconds = time.time() - t_train

    net = net.to(memory_format=torch.contiguous_format).float().eval()
    x_test_f = x_test.float() / 255
    clean_acc = (predict(net, x_test_f) == y_test).float().mean().item()
    asr = None
    if attack:
        keep = y_test != target
        xt = attack.apply(x_test_f[keep])
        if family != "wanet":
            xt = to_u8(xt).float() / 255
        asr = (predict(net, xt) == target).float().mean().item()
    print(f"{args.model}: clean accuracy {clean_acc:.4f}, attack success "
          f"{'-' if asr is None else f'{asr:.4f}'}, train {train_seconds:.1f} s, "
          f"{n * args.epochs / train_seconds:.0f} images/s", flush=True)

    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, f"{args.model}.onnx")
    export_onnx(net, onnx_path)
    with open(os.path.join(args.out, f"{args.model}.cepa.toml"), "w") as f:
        f.write(SPEC)
    entry = {
        "id": args.model,
        "path": f"{args.model}.onnx",
        "spec": f"{args.model}.cepa.toml",
        "dataset": "cifar10",
        "data_dir": data_dir,
        "arch": "preact-resnet-torch",
        "attack": family,
        "params": {
            "attack": attack.params if attack else {},
            "target": target,
            "width": args.width,
            "widths": [args.width * m for m in (1, 2, 4, 8)],
            "epochs": args.epochs,
            "recipe": {
                "network": "PreActResNet18 (bn+relu before avg_pool2d(4))",
                "optimizer": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                "schedule": "cosine per epoch", "batch": BATCH,
                "augment": "random crop 32 pad 4 (zeros), horizontal flip",
                "precision": "bf16 autocast, channels_last" if cuda else "float32",
                "normalisation": "none ([0,1] input)",
            },
            "train_images": n,
            "poisoned_train_images": len(poisoned) if family != "wanet" else None,
            "torch": torch.__version__,
            "trainer": "pytorch",
        },
        "target": target,
        "sources": None,
        "seed": seed,
        "clean_accuracy": clean_acc,
        "attack_success_rate": asr,
        "train_seconds": train_seconds,
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "images_per_second": n * args.epochs / train_seconds,
    }
    tmp = os.path.join(args.out, f".{args.model}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(entry, f, indent=2)
    os.replace(tmp, os.path.join(args.out, f"{args.model}.json"))
    print(f"{args.model}: wrote {onnx_path}", flush=True)


def export_onnx(net, path):
    import onnx

    net = net.to(memory_format=torch.contiguous_format).float().cpu().eval()
    dummy = torch.zeros(1, 3, 32, 32)
    tmp = path + ".tmp"
    with torch.no_grad():
        torch.onnx.export(
            net, (dummy,), tmp, opset_version=13, dynamo=False,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(tmp), full_check=True)
    os.replace(tmp, path)


# ---------------------------------------------------------------- manifest


def manifest(out):
    entries = []
    for p in sorted(glob.glob(os.path.join(out, "*.json"))):
        if os.path.basename(p) == "manifest.json":
            continue
        try:
            with open(p) as f:
                e = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(e, dict) and "id" in e:
            entries.append(e)
    entries.sort(key=lambda e: e["id"])
    for e in entries:
        asr = e.get("attack_success_rate")
        ips = e.get("images_per_second")
        print(f"{e['id']:<22} clean {e['clean_accuracy']:.4f}  asr "
              f"{'  -   ' if asr is None else f'{asr:.4f}'}  train {e['train_seconds']:.1f} s  "
              f"{'-' if ips is None else f'{ips:.0f}'} images/s", flush=True)
    models = [{k: v for k, v in e.items() if k != "images_per_second"} for e in entries]
    tmp = os.path.join(out, ".manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"models": models}, f, indent=2)
    os.replace(tmp, os.path.join(out, "manifest.json"))
    print(f"{len(models)} models in {os.path.join(out, 'manifest.json')}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="folder of CIFAR-10 *.bin.gz records")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="torch-{clean,badnets,blend,wanet,sig}-s<seed>")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--limit-train", type=int, default=0, help="first N training images (tests)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--manifest", action="store_true", help="gather *.json in --out")
    args = ap.parse_args()
    if args.manifest:
        manifest(args.out)
        return
    if not args.data or not args.model:
        ap.error("--data and --model are needed to train")
    if args.epochs < 1:
        ap.error("--epochs must be at least 1")
    train(args)


if __name__ == "__main__":
    main()
