"""Recompute the simulator's prediction of every run of an ``ionn-bench`` output directory.

The measurement stays as recorded; the prediction block is replaced by the one the
current ``ionn_net.bench.predict`` computes from the run's own records (the one written at
run time is kept as ``prediction_at_run``). Then ``ionn-bench --report DIR`` re-renders
the summary and plots. Needs TensorFlow: it rebuilds each model's graph (random weights,
the run's seed).

Usage: ``python bench/repredict.py DIR``
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(out: Path) -> int:
    import keras

    from ionn_net.bench.models import build_model
    from ionn_net.bench.predict import predict_run
    from ionn_net.bench.results import query_points, run_metrics
    from ionn_net.executor import Executor

    graphs: dict[tuple[str, int], Any] = {}
    for path in sorted((out / "runs").glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("status") != "ok" or not doc.get("queries") or "per_layer" not in doc:
            continue
        seed = int(doc.get("seed", 0))
        key = (doc["model"]["name"], seed)
        if key not in graphs:
            keras.backend.clear_session()  # layer names as in a fresh worker process
            graphs[key] = Executor.from_model(build_model(key[0], seed=seed)).graph
        n = int(doc["scenario"].get("run", {}).get("target_queries", 100))
        doc["metrics"] = run_metrics(doc, n=n)
        doc.setdefault("prediction_at_run", doc.get("prediction"))
        doc["prediction"] = predict_run(doc, graphs[key], query_points(doc["queries"]))
        path.write_text(json.dumps(doc, indent=1, allow_nan=False, default=str))
        err = doc["prediction"]["errors"].get("mean_during_upload_pct")
        print(f"{path.name}: mean during upload error {err if err is None else round(err, 1)}%")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
