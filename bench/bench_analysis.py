"""Benchmark the analysis toolkit (issue 3): a per-layer logistic-probe sweep (30 layers x
20,000 samples x 576 features, binary labels, C=0.1, standardized) and PCA on 20,000 x 576,
against scikit-learn on the same data, threads and machine, side by side in one process.

Data are synthetic activation-like arrays: Gaussian features with a planted label direction
whose strength grows with the layer, plus a few large-variance "massive" dimensions.
Usage:

    python bench/bench_analysis.py [--layers 30] [--n 20000] [--d 576] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from _timing import median_time


def make_data(layers: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    X = rng.normal(size=(layers, n, d)).astype(np.float32)
    for layer in range(layers):
        X[layer] += np.outer((y - 0.5) * (0.2 + 0.05 * layer), w).astype(np.float32)
        X[layer, :, :3] *= 50.0  # massive activations
    return X, y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    from mindscope.analysis import PCA, layer_sweep

    X, y = make_data(args.layers, args.n, args.d)
    rows = []
    t_ms, sweep = median_time(lambda: layer_sweep(X, y, probe="logistic", C=0.1), args.repeats, warmup=False)
    rows.append(("logistic sweep", "mindscope", t_ms, float(np.mean(sweep["test"]))))
    t_pca, pca = median_time(lambda: PCA(10).fit(X[-1]), args.repeats)
    rows.append(("PCA 10 comps", "mindscope", t_pca, float(pca.explained_variance_ratio_.sum())))
    try:
        from sklearn.decomposition import PCA as SkPCA
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        sk = None
    else:
        from mindscope.analysis import train_test_split_indices

        train, test = train_test_split_indices(args.n, 0.2, 0)

        def sk_sweep() -> list[float]:
            out = []
            for layer in range(args.layers):
                sc = StandardScaler().fit(X[layer][train])
                m = LogisticRegression(C=0.1, max_iter=1000).fit(sc.transform(X[layer][train]), y[train])
                out.append(m.score(sc.transform(X[layer][test]), y[test]))
            return out

        t_sk, acc = median_time(sk_sweep, args.repeats, warmup=False)
        rows.append(("logistic sweep", "scikit-learn", t_sk, float(np.mean(acc))))
        t_skp, skp = median_time(lambda: SkPCA(10, svd_solver="full").fit(X[-1].astype(np.float64)), args.repeats)
        rows.append(("PCA 10 comps", "scikit-learn", t_skp, float(skp.explained_variance_ratio_.sum())))
        sk = (t_sk, t_skp)
    print(f"{args.layers} layers x {args.n} samples x {args.d} features, {args.threads} threads, median of "
          f"{args.repeats} (load average {os.getloadavg()[0]:.2f})")
    print(f"{'task':16s} {'impl':13s} {'seconds':>8s} {'quality':>9s}")
    for task, impl, t, q in rows:
        print(f"{task:16s} {impl:13s} {t:8.2f} {q:9.4f}")
    print("(quality: mean held-out accuracy over layers for the sweep; explained variance ratio for PCA)")
    if sk:
        print(f"mindscope vs scikit-learn: sweep {sk[0] / t_ms:.2f}x, PCA {sk[1] / t_pca:.2f}x (>1 = mindscope faster)")


if __name__ == "__main__":
    main()
