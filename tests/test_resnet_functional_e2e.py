"""End to end: a ResNet whose blocks call ``F.relu`` in ``forward`` (torchvision's style, no
activation modules at all) has its activation rules evaluated, and dead-relu (OD305) fires when
most of a layer's channels are killed and stays silent on the near miss just under its 50%;
with ``torch.tanh`` instead, saturated-at-init (OD303) is evaluated."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from optdoctor.cli import app

RESNET = '''\
from torch import nn
import torch
import torch.nn.functional as F

ACT = {"relu": F.relu, "tanh": torch.tanh}


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride, act):
        super().__init__()
        self.act = ACT[act]
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.short(x))


def resnet(*, in_channels=1, out_dim=4, n=1, width=4, kill=0.0, act="relu"):
    """CIFAR ResNet (He et al. 2016), 6n+2 layers; ``kill``: the fraction of each block's first
    channels whose BatchNorm shift is -10 (never active after F.relu, for any input)."""

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
            stages, c = [], width
            for i, w in enumerate((width, 2 * width, 4 * width)):
                stages += [Block(c, w, 1 if i == 0 else 2, act)] + [Block(w, w, 1, act) for _ in range(n - 1)]
                c = w
            self.blocks = nn.Sequential(*stages)
            self.fc = nn.Linear(c, out_dim)

        def forward(self, x):
            x = self.blocks(ACT[act](self.bn(self.conv(x))))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    net = ResNet()
    for b in net.blocks:
        nn.init.constant_(b.bn1.bias[: int(kill * b.bn1.bias.numel())].data, -10.0)
    return net
'''

CONFIG = textwrap.dedent("""\
    name: resnet-frelu
    model: {{factory: resnet.py:resnet, args: {{n: 1, width: 4, kill: {kill}, act: {act}}}}}
    data: {{factory: optdoctor.data:bars, args: {{n_train: 256, n_val: 64, image_size: 8}}, batch_size: 32}}
    optimizer: {{name: sgd, lr: 0.05, args: {{momentum: 0.9}}}}
    probe: {{steps: 30, hessian: {{enabled: false}}, threads: 1}}
    """)


def diagnose(tmp_path, kill: float = 0.0, act: str = "relu") -> dict:
    (tmp_path / "resnet.py").write_text(RESNET)
    (tmp_path / "resnet.yaml").write_text(CONFIG.format(kill=kill, act=act))
    r = CliRunner().invoke(app, ["diagnose", str(tmp_path / "resnet.yaml"), "--format", "json"])
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("kill, fires", [(0.75, True), (0.375, False)], ids=["killed-fires", "near-miss-silent"])
def test_resnet_with_functional_relus_has_dead_relu_evaluated(tmp_path, kill, fires):
    d = diagnose(tmp_path, kill)
    status = {r["rule"]: r["status"] for r in d["rules"]}
    sym = d["symptoms"]
    # 7 F.relu call sites: the stem's and two per block (3 blocks)
    assert sym["act.layers"] == 7 and sym["act.nonrelu_frac"] == 0
    # 3/4, 6/8, 12/16 of a block's first channels; near miss: 1/4, 3/8, 6/16 (the rule's threshold is 50%)
    assert sym["act.dead_frac.init"] == pytest.approx(kill if fires else 0.375)
    assert status["OD305"] == ("fired" if fires else "passed")
    assert status["OD406"] != "not_evaluated" and status["OD302"] != "not_evaluated"
    assert ("OD305" in [f["rule"] for f in d["findings"]]) == fires


@pytest.mark.slow
def test_resnet_with_functional_tanh_has_saturation_evaluated(tmp_path):
    """The same blocks with torch.tanh: saturated-at-init (OD303) is evaluated (a network without
    any sigmoid/tanh has no saturation symptom: OD303 is not evaluated there, by design)."""
    d = diagnose(tmp_path, act="tanh")
    status = {r["rule"]: r["status"] for r in d["rules"]}
    assert d["symptoms"]["act.layers"] == 7 and d["symptoms"]["act.nonrelu_frac"] == 1
    assert "act.saturated_frac.init" in d["symptoms"] and status["OD303"] != "not_evaluated"
    assert status["OD305"] == "not_evaluated"  # no ReLU: nothing can die
