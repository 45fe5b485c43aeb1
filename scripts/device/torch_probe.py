"""Training throughput of PyTorch on the device, as a yardstick for `cepa zoo build --device cuda`.

The same network (PreAct-ResNet-18, widths 64-128-256-512, BatchNorm), batch 128, SGD with
momentum 0.9 and weight decay 5e-4, on the CIFAR-10 records in DATA (a folder of
data_batch_*.bin.gz): one warm-up epoch, then one timed epoch in float32 and one in bfloat16
autocast with channels-last memory. Prints images/s per mode. No data is downloaded.
"""
import glob, gzip, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load(folder):
    recs = b"".join(gzip.open(f).read() for f in sorted(glob.glob(f"{folder}/data_batch_*.bin.gz")))
    a = np.frombuffer(recs, np.uint8).reshape(-1, 3073)
    return torch.tensor(a[:, 1:].reshape(-1, 3, 32, 32)).float() / 255, torch.tensor(a[:, 0]).long()


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        s = self.short(o) if self.short is not None else x
        o = self.conv1(o)
        return self.conv2(F.relu(self.bn2(o))) + s


def preact18(w=(64, 128, 256, 512)):
    layers, cin = [nn.Conv2d(3, w[0], 3, 1, 1, bias=False)], w[0]
    for i, c in enumerate(w):
        for j in range(2):
            layers.append(Block(cin, c, 2 if i > 0 and j == 0 else 1))
            cin = c
    layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def epoch(net, opt, x, y, amp):
    perm = torch.randperm(len(x), device=x.device)
    torch.cuda.synchronize()
    t = time.time()
    for i in range(0, len(x), 128):
        idx = perm[i : i + 128]
        xb = x[idx]
        if amp:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return len(x) / (time.time() - t)


if __name__ == "__main__":
    x, y = load(sys.argv[1])
    x, y = x.cuda(), y.cuda()
    for amp in (False, True):
        torch.manual_seed(0)
        net = preact18().cuda()
        if amp:
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        epoch(net, opt, x, y, amp)
        print(f"torch {torch.__version__} {'bf16 channels-last' if amp else 'float32'}: "
              f"{epoch(net, opt, x, y, amp):.0f} images/s ({len(x)} images, batch 128)", flush=True)
