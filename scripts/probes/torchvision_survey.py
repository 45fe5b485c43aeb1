#!/usr/bin/env python3
"""Which of torchvision's classifiers does cepa's interpreter read, and does it compute what
onnxruntime computes? For each architecture (random weights, 10 classes, a batch of 4 images at
64x64; the transformers at reduced depth and width), export with torch's legacy exporter (opset
17) and its dynamo exporter, run onnxruntime, then cepa's `onnx_check` example: the forward
error relative to onnxruntime's largest output, and the input-gradient error relative to
PyTorch's float64 autograd on the module itself, beside PyTorch's own float32 gradient's error. Writes the table to scripts/probes/SUITE_survey.md (`--suite timm`: timm families).

Needs torch, torchvision, onnx, onnxruntime, onnxscript (PyPI) and the example built:
    cargo build --release -p cepa --example onnx_check
    python3 scripts/probes/torchvision_survey.py [--suite torchvision|timm] [NAME...]
Everything is seeded; the models and arrays go to a temporary folder and are deleted.
"""
import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from torchvision import models as tvm
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK = os.path.join(REPO, "target/release/examples/onnx_check")

ARCHS = {
    "resnet18": lambda: tvm.resnet18(num_classes=10),
    "resnet50": lambda: tvm.resnet50(num_classes=10),
    "resnext50_32x4d": lambda: tvm.resnext50_32x4d(num_classes=10),
    "wide_resnet50_2": lambda: tvm.wide_resnet50_2(num_classes=10),
    "vgg11_bn": lambda: tvm.vgg11_bn(num_classes=10),
    "alexnet": lambda: tvm.alexnet(num_classes=10),
    "squeezenet1_1": lambda: tvm.squeezenet1_1(num_classes=10),
    "densenet121": lambda: tvm.densenet121(num_classes=10),
    "googlenet": lambda: tvm.googlenet(num_classes=10, aux_logits=False, init_weights=True),
    "inception_v3": lambda: tvm.inception_v3(num_classes=10, aux_logits=False, init_weights=True),
    "mobilenet_v2": lambda: tvm.mobilenet_v2(num_classes=10),
    "mobilenet_v3_small": lambda: tvm.mobilenet_v3_small(num_classes=10),
    "mobilenet_v3_large": lambda: tvm.mobilenet_v3_large(num_classes=10),
    "mnasnet0_5": lambda: tvm.mnasnet0_5(num_classes=10),
    "shufflenet_v2_x0_5": lambda: tvm.shufflenet_v2_x0_5(num_classes=10),
    "efficientnet_b0": lambda: tvm.efficientnet_b0(num_classes=10),
    "regnet_y_400mf": lambda: tvm.regnet_y_400mf(num_classes=10),
    "regnet_x_400mf": lambda: tvm.regnet_x_400mf(num_classes=10),
    "convnext (2 stages)": lambda: ConvNeXt([CNBlockConfig(24, 48, 1), CNBlockConfig(48, None, 1)],
                                           num_classes=10),
    "vit (2 layers)": lambda: VisionTransformer(image_size=64, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=10),
    "swin (2 stages)": lambda: SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[1, 1],
                                               num_heads=[2, 2], window_size=[4, 4], num_classes=10),
}
SIZE = {"inception_v3": 96, "alexnet": 224}


def timm_model(name, **kw):
    import timm
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kw)


# `--suite timm`: families of timm (PyTorch Image Models) with ops torchvision's do not reach:
# split attention, Res2Net's splits, selective kernels, deep aggregation, multi-resolution
# fusion (upsampling), ghost modules, weight standardisation, MLP-Mixer, LeViT's attention
# biases, PoolFormer's GroupNorm, MobileViT's unfolding, XCiT's Fourier positions.
TIMM = {
    "resnest14d": timm_model("resnest14d"),
    "res2net50_14w_8s": timm_model("res2net50_14w_8s"),
    "skresnet18": timm_model("skresnet18"),
    "dla34": timm_model("dla34"),
    "dpn68": timm_model("dpn68"),
    "hrnet_w18_small": timm_model("hrnet_w18_small"),
    "ghostnet_100": timm_model("ghostnet_100"),
    "lcnet_050": timm_model("lcnet_050"),
    "rexnet_100": timm_model("rexnet_100"),
    "repvgg_a0": timm_model("repvgg_a0"),
    "nf_resnet26": timm_model("nf_resnet26"),
    "cs3darknet_s": timm_model("cs3darknet_s"),
    "xception41": timm_model("xception41"),
    "efficientnetv2_rw_t": timm_model("efficientnetv2_rw_t"),
    "convnext_atto": timm_model("convnext_atto"),
    "poolformer_s12": timm_model("poolformer_s12"),
    "mobilevit_xxs": timm_model("mobilevit_xxs"),
    "edgenext_xx_small": timm_model("edgenext_xx_small"),
    "deit_tiny_patch16_224": timm_model("deit_tiny_patch16_224", img_size=64),
    "mixer_s16_224": timm_model("mixer_s16_224", img_size=64),
    "levit_128s": timm_model("levit_128s", img_size=64),
    "xcit_nano_12_p16_224": timm_model("xcit_nano_12_p16_224", img_size=64),
    "pit_ti_224": timm_model("pit_ti_224", img_size=64),
    "resmlp_12_224": timm_model("resmlp_12_224", img_size=64),
}
SUITES = {"torchvision": ARCHS, "timm": TIMM}


def export(model, x, path, dynamo):
    if dynamo:
        torch.onnx.export(model, (x,), path, dynamo=True, external_data=True,
                          input_names=["input"], output_names=["output"])
    else:
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})


def responsive(model, side):
    """A random network answers nearly the same to every image (BatchNorm statistics at their
    initial values, zero-initialised heads): set the statistics from random batches, give zero
    weights random values and widen the last layer, so outputs and gradients are not tiny."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        for m in linears:
            if float(m.weight.abs().max()) == 0.0:
                m.weight.normal_(0.0, m.in_features ** -0.5, generator=g)
        if linears:
            linears[-1].weight *= 5.0
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # a cumulative average over the batches below
        model.train()
        for _ in range(4):
            model(torch.rand((8, 3, side, side), generator=g))
    return model.eval()


def one(name, ctor, tmp):
    torch.manual_seed(0)
    side = SIZE.get(name, 64)
    model = responsive(ctor(), side)
    x = np.random.default_rng(0).random((4, 3, side, side), dtype=np.float32)
    # PyTorch's gradient in float64 is the reference; its own float32 gradient's distance from
    # it says how far float32 rounding alone moves the gradient of this (random, deep) network.
    grads = {}
    for dt in (torch.float32, torch.float64):
        xt = torch.tensor(x, dtype=dt, requires_grad=True)
        (-torch.log_softmax(model.to(dt)(xt), 1)[:, 0].mean()).backward()
        grads[dt] = xt.grad.double().numpy()
    model = model.to(torch.float32)
    g64 = grads[torch.float64]
    torch32 = float(np.abs(grads[torch.float32] - g64).max() / np.abs(g64).max())
    np.save(os.path.join(tmp, "gx.npy"), g64.astype(np.float32))
    rows = []
    for exporter in ("legacy-17", "dynamo"):
        path = os.path.join(tmp, "m.onnx")
        for f in (path, path + ".data"):
            if os.path.exists(f):
                os.remove(f)
        row = {"model": name, "exporter": exporter, "torch_f32_grad_rel_err": torch32}
        try:
            export(model, torch.tensor(x), path, exporter == "dynamo")
            ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            np.save(os.path.join(tmp, "x.npy"), x)
            np.save(os.path.join(tmp, "ref.npy"), ref.astype(np.float32))
            out = subprocess.run([CHECK, path, os.path.join(tmp, "x.npy"), os.path.join(tmp, "ref.npy"),
                                  os.path.join(tmp, "gx.npy")],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            row.update(json.loads(out))
        except Exception as e:  # an export failure is recorded, not fatal
            row["export_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "ops"}), flush=True)
    return rows


def main():
    args = sys.argv[1:]
    suite = "torchvision"
    if args[:1] == ["--suite"]:
        suite, args = args[1], args[2:]
    archs = SUITES[suite]
    names = args or list(archs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            rows += one(n, archs[n], tmp)
    version = torchvision.__version__
    if suite == "timm":
        import timm
        version = f"{torchvision.__version__}, timm {timm.__version__}"
    lines = [
        f"# {suite}'s classifiers through cepa's interpreter",
        "",
        f"Made by `python3 scripts/probes/torchvision_survey.py --suite {suite}` (torch {torch.__version__}, "
        f"torchvision {version}, onnxruntime {ort.__version__}): random weights, 10 classes, 4 images at "
        "64x64 (inception_v3 at 96x96, alexnet at 224x224). Forward: the largest difference from onnxruntime's output over its "
        "largest magnitude. Gradient: the input gradient of the batch-mean cross-entropy toward class 0 against "
        "PyTorch's float64 autograd on the module, relative to its largest magnitude, beside PyTorch's own "
        "float32 gradient against the same reference (on deep random ReLU networks float32 rounding alone "
        "moves the gradient by per cents). ok: forward under 1e-4, gradient under 1e-3 or within twice "
        "PyTorch's own float32 error.",
        "",
        "Reading: \"not read\" names the op or setting the interpreter refused (it never skips one); \"export "
        "failed\" is torch refusing to export. A gradient that "
        "differs from PyTorch's by per cents while the forward pass agrees is a max-pooling window whose two "
        "largest inputs lie within float32 rounding of each other: the two computations pick different "
        "winners, and each gradient is right for its own pick (session 32 traced one such window in VGG-11: "
        "0.0564902 against 0.0564891, the gradient going to the other pixel). Random weights make such near "
        "ties common; PyTorch's own float32 gradient shows the same spread on the deep ReLU networks.",
        "",
        "| model | exporter | forward rel. error | gradient rel. error | PyTorch float32's | result |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "export_error" in r:
            lines.append(f"| {r['model']} | {r['exporter']} | | | | export failed in torch: {r['export_error']} |")
        elif "error" in r:
            lines.append(f"| {r['model']} | {r['exporter']} | | | | **not read**: {r['error']} |")
        else:
            fwd, grad = r.get("forward_rel_err"), r.get("grad_rel_err")
            t32 = r["torch_f32_grad_rel_err"]
            ok = fwd is not None and grad is not None and fwd < 1e-4 and (grad < 1e-3 or grad <= 2 * t32)
            show = lambda v: "n/a" if v is None else f"{v:.1e}"
            lines.append(f"| {r['model']} | {r['exporter']} | {show(fwd)} | {show(grad)} | {show(t32)} | "
                         f"{'ok' if ok else '**differs**'} |")
    with open(os.path.join(REPO, f"scripts/probes/{suite}_survey.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
