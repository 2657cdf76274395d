"""How fast rule conditions compile and evaluate (optdoctor/engine/expr.py).

    python benchmarks/expr.py [--repeats 7] [--number 200000]

Prints evaluations per second of a typical rule condition (median of the repeats) and the
time to compile it. DESIGN.md measured ~600k evaluations/s for this kind of compiler.
"""

from __future__ import annotations

import argparse
import statistics
import timeit

from optdoctor.engine.expr import compile_expr

# A typical condition: a guard, a negated threshold, a chained comparison, a function call.
CONDITION = (
    "not isnan(hess.lambda_min_rel) and hess.lambda_min_rel < -params.neg_rel"
    " and 0 < grad.depth_ratio < params.ratio_max and max(loss.rel_drop, 0) < 0.05"
)
ENV = {
    "hess.lambda_min_rel": -0.2,
    "params.neg_rel": 0.1,
    "grad.depth_ratio": 0.01,
    "params.ratio_max": 0.1,
    "loss.rel_drop": 0.01,
}
KNOWN = set(ENV) | {f"symptom.number_{i}" for i in range(200)}  # a registry-sized name list


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=200_000, help="evaluations per repeat")
    args = parser.parse_args()

    expr = compile_expr(CONDITION, known_names=KNOWN)
    assert expr.evaluate(ENV) is True  # every clause is evaluated (no early exit)
    evaluate = expr.evaluate
    times = timeit.repeat(lambda: evaluate(ENV), number=args.number, repeat=args.repeats)
    per_s = args.number / statistics.median(times)

    n_compile = 2_000
    compile_times = timeit.repeat(lambda: compile_expr(CONDITION, known_names=KNOWN), number=n_compile,
                                  repeat=args.repeats)
    compile_us = statistics.median(compile_times) / n_compile * 1e6

    print(f"condition: {CONDITION}")
    print(f"evaluate:  {per_s:,.0f} evaluations/s (median of {args.repeats} x {args.number:,})")
    print(f"compile:   {compile_us:,.0f} us per expression (median of {args.repeats} x {n_compile:,})")


if __name__ == "__main__":
    main()
