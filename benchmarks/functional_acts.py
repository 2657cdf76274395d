"""What seeing functional activations costs (``probes/instruments/functional.py``).

    python benchmarks/functional_acts.py [--steps 200] [--repeats 5] [--forwards 50]

Two models whose activations are all function calls in ``forward``: a CIFAR ResNet-20 (He et
al. 2016; F.relu after BatchNorm and after the residual sum; 8/16/32 channels, 8x8 images) and
a 2-block transformer encoder (``optdoctor.models:transformer``: softmax written out in the
attention, nn.GELU in the MLP).

1. one training-mode forward pass, median CPU time over ``--forwards`` calls: plain; under the
   ``FunctionalActivations`` mode with a no-op callback (the Python dispatch of every torch
   call in the pass); with the activations measured as ``Activations`` does after its first
   measured step (no unit diversity). The number of
   torch calls the mode intercepts per pass is printed too.
2. ``benchmarks/overhead.py``'s interleaved probe/plain ratio for whole probes (``--steps``),
   where the mode is on for ~10 measured passes per probe. Run it with PYTHONPATH pointing at
   a checkout without functional activations for the "before" (part 1 is skipped there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import bench  # noqa: E402

from optdoctor.config import load_config  # noqa: E402
from optdoctor.probes.setup import prepare  # noqa: E402

RESNET = '''\
from torch import nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet(nn.Module):
    def __init__(self, in_channels, out_dim, n, width):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        stages, c = [], width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            stages += [Block(c, w, 1 if i == 0 else 2)] + [Block(w, w, 1) for _ in range(n - 1)]
            c = w
        self.blocks = nn.Sequential(*stages)
        self.fc = nn.Linear(c, out_dim)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet(*, in_channels=1, out_dim=4, n=3, width=8):
    return ResNet(in_channels, out_dim, n, width)
'''

PROBE = "probe: {{steps: {steps}, val_every: {steps}, hessian: {{enabled: false}}, threads: 1}}\n"
MODELS = {
    "resnet20-F": """\
model: {factory: resnet.py:resnet, args: {n: 3, width: 8}}
data: {factory: optdoctor.data:bars, args: {n_train: 512, image_size: 8}, batch_size: 64}
optimizer: {name: sgd, lr: 0.05, args: {momentum: 0.9}}
""",
    "transformer": """\
model: {factory: optdoctor.models:transformer, args: {d_model: 32, n_heads: 2, n_layers: 2}}
data: {factory: optdoctor.data:sequence, batch_size: 64}
optimizer: {name: adamw, lr: 3e-3}
""",
}


def per_forward(setup, forwards: int) -> str:
    try:
        from optdoctor.probes.instruments import Activations, Context, discover
        from optdoctor.probes.instruments.functional import FunctionalActivations, is_site
    except ImportError:
        return "(no functional activations in this checkout)"
    from optdoctor.probes.recorder import Recorder

    model = setup.build_model(0)
    model.train()
    X = setup.train.head(setup.cfg.data.batch_size)[0]
    _, acts = discover(model, X)
    calls = [0]

    class Counting(FunctionalActivations):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            calls[0] += 1
            return super().__torch_function__(func, types, args, kwargs)

    noop = Counting(model, lambda *a: None, skip={m for n, m, _ in acts if not is_site(n)})
    inst = Activations(every=1)
    inst.attach(Context(model, None, Recorder(), [], acts))

    def plain():
        model(X)

    def mode():
        with noop:
            model(X)

    def measured():
        inst.before_forward(0)
        model(X)
        inst.detach()
        inst._stats.clear()

    out = {}
    with torch.no_grad():
        for name, fn in (("plain", plain), ("mode", mode), ("measured", measured)):
            fn()
        inst._first = False  # unit diversity is measured on a probe's first measured step only
        times = {k: [] for k in ("plain", "mode", "measured")}
        for _ in range(forwards):
            for name, fn in (("plain", plain), ("mode", mode), ("measured", measured)):
                t0 = time.process_time()  # CPU time: steadier than wall time on a shared machine
                fn()
                times[name].append(time.process_time() - t0)
        out = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    calls[0] = 0
    with torch.no_grad(), noop:
        model(X)
    return (f"{len(acts)} activation columns, {calls[0]} torch calls intercepted per pass; forward ms: plain {out['plain']:.2f}, "
            f"mode {out['mode']:.2f} (+{out['mode'] - out['plain']:.2f}), measured {out['measured']:.2f} "
            f"(+{out['measured'] - out['plain']:.2f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--forwards", type=int, default=50)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "resnet.py").write_text(RESNET)
        for name, text in MODELS.items():
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(text + PROBE.format(steps=args.steps))
            setup = prepare(load_config(path))
            print(f"{name}: {per_forward(setup, args.forwards)}")
            r = bench(name, setup, args.steps, args.repeats)
            m, q = r["median"], r["ratio"]
            print(f"{name}: {r['acts']} act columns, {args.steps} steps: plain {m['plain']:.3f}s probe {m['probe']:.3f}s "
                  f"lite {m['lite']:.3f}s; probe/plain {q['probe']:.2f}x lite/plain {q['lite']:.2f}x; "
                  f"same losses {'yes' if r['same'] else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
