"""Train the demo network on the seeded MNIST split and save its weights (seeded, ~1 min).

    .venv/bin/python scripts/train_demo.py
"""

import argparse

import torch

from sw.models import MODELS, WEIGHTS


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-mnist", choices=sorted(MODELS))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    build, data = MODELS[args.model]
    x_train, y_train, x_test, y_test = data()
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(x_train), generator=gen).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(f"epoch {epoch + 1:2d}  loss {loss.item():.4f}  test accuracy {100 * acc:.1f}%")
    path = WEIGHTS / f"{args.model.replace('-', '_')}.pt"
    torch.save(model.state_dict(), path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
