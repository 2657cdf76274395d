"""Lightning and Hugging Face callbacks, with the real packages (slow; skipped without the extras)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LIGHTNING = """
import sys, torch
torch.set_num_threads(1)
import lightning as L
from torch.utils.data import DataLoader, TensorDataset
from optdoctor import data, models
from optdoctor.integrations.lightning import OptDoctor

class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = models.mlp(in_dim=20, out_dim=4, depth=10, width=32, act="sigmoid")
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)
    def validation_step(self, batch, _):
        x, y = batch
        out = self(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(out, y), sync_dist=True)
        self.log("val_acc", (out.argmax(1) == y).float().mean(), sync_dist=True)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

(X, y), (Xv, yv) = data.blobs()
train = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)
val = DataLoader(TensorDataset(Xv, yv), batch_size=128)
cb = OptDoctor(json_path=sys.argv[1], every=5, detail_every=10, checkpoint_every=20, loss_fn=torch.nn.functional.cross_entropy)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=4, logger=False, callbacks=[cb],
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=sys.argv[2])
trainer.fit(Net(), train, val)
print("RANK_DONE", trainer.global_rank, [f.cause for f in cb.diagnosis.findings], flush=True)
"""

HF = """
import sys, torch
torch.set_num_threads(1)
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from optdoctor.integrations.transformers import OptDoctor

cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=16, num_labels=2)
torch.manual_seed(0)
model = BertForSequenceClassification(cfg)
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, 64, (256, 8), generator=g)
labels = (ids[:, 0] < 32).long()

class DS(torch.utils.data.Dataset):
    def __init__(self, a, b): self.a, self.b = a, b
    def __len__(self): return len(self.a)
    def __getitem__(self, i): return {"input_ids": self.a[i], "labels": self.b[i]}

args = TrainingArguments(output_dir=sys.argv[1], max_steps=40, per_device_train_batch_size=16, gradient_accumulation_steps=2,
                         learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", eval_strategy="steps",
                         eval_steps=10, logging_steps=10, disable_tqdm=True)
cb = OptDoctor(every=2, detail_every=10, checkpoint_every=10, model_loss=True)
trainer = Trainer(model=model, args=args, train_dataset=DS(ids[:192], labels[:192]), eval_dataset=DS(ids[192:], labels[192:]),
                  callbacks=[cb])
trainer.train()
t = cb.monitor.trace()
print("STEPS", len(t.steps("loss.train")), "GRADS", t.values("grad.norm").shape, "VAL", len(t.steps("loss.val")))
"""


def _run(script: str, *args: str, timeout: int = 240, folder: Path | None = None) -> subprocess.CompletedProcess:
    """Runs ``script`` from a file (Lightning's DDP launcher re-executes ``sys.argv``)."""
    path = Path(folder or args[-1]) / "script.py"
    path.write_text(textwrap.dedent(script))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.slow
def test_lightning_ddp_two_processes(tmp_path):
    pytest.importorskip("lightning")
    out_json = tmp_path / "diag.json"
    r = _run(LIGHTNING, str(out_json), str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    both = r.stdout + r.stderr
    assert both.count("optdoctor · monitor") == 1, both[-3000:]  # printed once (rank 0)
    assert both.count("diagnosis written to") == 1
    assert both.count("RANK_DONE") == 2  # both ranks hold the diagnosis
    d = json.loads(out_json.read_text())
    assert d["findings"][0]["cause"] == "vanishing_gradients"
    assert d["probes"]["baseline"]["steps"] > 0
    # loss_fn given: the kept (x, y) batches give the Hessian at the end, and the curvature rules run
    assert d["symptoms"]["hess.lambda_max"] > 0
    assert all("hess." not in r.get("reason", "") for r in d["rules"]), [r for r in d["rules"] if "hess." in r.get("reason", "")]


@pytest.mark.slow
def test_huggingface_trainer(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    r = _run(HF, str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    both = r.stdout + r.stderr
    assert both.count("optdoctor · monitor") == 1
    assert "STEPS 40 " in both and "VAL 4" in both, both[-2000:]
    d = json.loads((tmp_path / "optdoctor.json").read_text())
    assert "findings" in d and d["probes"]["baseline"]["steps"] == 40
    assert d["symptoms"]["hess.lambda_max"] > 0  # model_loss=True: the model's own loss on a kept batch
