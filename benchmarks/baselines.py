# .venv/bin/python benchmarks/baselines.py --data DIR [DIR ...] [--split test]
"""The trivial baselines of prepared datasets (puma_ray/core/baselines.py): fitted on each dataset's train rows,
scored on every row of --split, one JSON line per dataset (what `evaluate` and `bench` put beside every model
figure, here without a model)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.core.baselines import dataset_baselines  # noqa: E402
from puma_ray.data.schema import read_manifest, shard_paths  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", nargs="+", required=True, help="dataset directories written by `puma-ray data`")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    args = p.parse_args()
    for d in args.data:
        manifest = read_manifest(d)
        found = dataset_baselines(shard_paths(d), manifest["task"], args.split)
        print(json.dumps({"data": d, "source": manifest["source"], "task": manifest["task"], **found}))


if __name__ == "__main__":
    main()
