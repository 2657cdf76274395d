"""Time to the first probe step on a map-style Dataset too big to materialise (issue 11).

    python benchmarks/big_dataset.py [--n 10000000] [--steps 50]

The Dataset makes each item on access (a seeded 8-feature blob and its class, ~30 us); nothing
is read beyond the batches the probes use. Prints: preparing the data (the evaluation sample of
1024 items, class count, chance loss), time from the start of the diagnosis to the baseline's
first step, the whole diagnosis, and how many items were read.
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

import torch

USER = '''
import torch
from torch.utils.data import Dataset

READS = [0]


class Lazy(Dataset):
    def __init__(self, n, seed=0):
        self.n, self.seed = n, seed
        self.centres = 2 * torch.randn(4, 8, generator=torch.Generator().manual_seed(123))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        READS[0] += 1
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        y = int(torch.randint(4, (1,), generator=g))
        return self.centres[y] + torch.randn(8, generator=g), y


def lazy(n_train):
    return Lazy(n_train), Lazy(10_000, seed=1)
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from optdoctor.config import load_config
    from optdoctor.diagnose import run_diagnosis
    from optdoctor.probes.setup import prepare

    def diagnose(d: Path, n: int) -> tuple[float, float, float, int, list]:
        (d / "big.yaml").write_text(textwrap.dedent(f"""\
            model: {{factory: optdoctor.models:mlp, args: {{depth: 2, width: 32}}}}
            data: {{factory: user.py:lazy, args: {{n_train: {n}}}, batch_size: 64}}
            optimizer: {{name: adam, lr: 3e-3}}
            probe: {{steps: {args.steps}}}
            """))
        loaded = load_config(d / "big.yaml")
        t = time.perf_counter()
        setup = prepare(loaded)
        t_prepare = time.perf_counter() - t
        reads = setup.data_factory.__globals__["READS"]
        reads[0] = 0
        first: dict[str, float] = {}
        t0 = time.perf_counter()

        def progress(name: str, step: int, steps: int) -> None:
            first.setdefault(name, time.perf_counter() - t0)

        diag = run_diagnosis(loaded, progress=progress)
        return t_prepare, first["baseline"], time.perf_counter() - t0, reads[0], [(f.cause, f.severity) for f in diag.findings]

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "user.py").write_text(USER)
        cold = diagnose(Path(d), args.n)
        cold_first = time.perf_counter() - t_start
        warm = diagnose(Path(d), args.n)
    print(f"n = {args.n:,} items made on access, {args.steps} steps; seconds:")
    for name, (prep, first, total, reads, findings) in (("first diagnosis in this process", cold), ("second", warm)):
        print(f"  {name}: prepare {prep:.2f}, diagnosis start -> first baseline step {first:.2f}, "
              f"whole diagnosis {total:.1f}; items read by the diagnosis {reads:,}; findings {findings}")
    print("  (the first diagnosis in a process also imports torch._dynamo at torch's first optimizer: 1-3 s)")


if __name__ == "__main__":
    main()
