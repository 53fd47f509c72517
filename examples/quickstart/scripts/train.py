"""A tiny training script: fits y = 2x + 1 by gradient descent and logs as it goes.

It runs unchanged with or without rundock: outside a job the run is offline and prints.
"""

import argparse
import os
import pickle

from rundock.context import Run

parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, default=0.1, help="learning rate")
parser.add_argument("--epochs", type=int, default=20)
args = parser.parse_args()

run = Run.get_context()
run.log("alpha", args.alpha)

xs = [i / 50 for i in range(50)]
ys = [2 * x + 1 for x in xs]
w, b = 0.0, 0.0
for epoch in range(args.epochs):
    grad_w = sum((w * x + b - y) * x for x, y in zip(xs, ys)) * 2 / len(xs)
    grad_b = sum((w * x + b - y) for x, y in zip(xs, ys)) * 2 / len(xs)
    w, b = w - args.alpha * grad_w, b - args.alpha * grad_b
    mse = sum((w * x + b - y) ** 2 for x, y in zip(xs, ys)) / len(xs)
    run.log("mse", mse)
    print(f"epoch {epoch:2d}  mse {mse:.4f}")

run.log_row("fit", w=w, b=b)
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.pkl", "wb") as fh:
    pickle.dump({"w": w, "b": b}, fh)
print(f"saved outputs/model.pkl (w={w:.3f}, b={b:.3f})")
