"""lambda_max of the Hessian and of the Gauss-Newton matrix at the last checkpoint of finished runs,
on each run's training set (H = G + R; R vanishes where the residuals vanish): the whole set, or its
first N images with ``--n N``.

    python scripts/h_vs_ggn.py [--n N] RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharpcomp.engine.loading import load_run  # noqa: E402
from sharpcomp.engine.setup import load_data
from sharpcomp.measures.curvature.ggn_max import ggn_top  # noqa: E402
from sharpcomp.measures.curvature.hessian_max import hessian_top  # noqa: E402
from sharpcomp.settings import settings  # noqa: E402


def main(argv: list[str]) -> int:
    n = None
    if len(argv) >= 2 and argv[0] == "--n":
        n, argv = int(argv[1]), argv[2:]
    if not argv:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    for d in argv:
        loaded = load_run(d)
        model, cfg, loss = loaded.model, loaded.config, loaded.loss_fn
        data = load_data(settings(cfg), torch.device("cpu"))
        x, y = data.train_x[:n], data.train_y[:n]
        with torch.no_grad():
            out = model(x)
        h = hessian_top(model, loss, x, y, k=1, tol=1e-5, max_iter=200).values[0]
        g = ggn_top(model, loss, x, y, k=1, tol=1e-5, max_iter=200).values[0]
        print(f"{Path(d).name}: n={len(x)}, train loss {float(loss(out, y)):.4f}, accuracy "
              f"{float((out.argmax(1) == y).float().mean()):.3f}; lambda_max(H) {h:.4f}, lambda_max(G) {g:.4f}, "
              f"(H - G) / H = {(h - g) / h:.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
