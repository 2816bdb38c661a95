# ray job submit --address http://127.0.0.1:8265 --runtime-env cluster/runtime-env.yaml --entrypoint-num-cpus 1 -- python jobs/bench.py --root "$PWD" --config configs/bench-synthetic.yaml
"""Ray job entrypoint of `puma-ray bench`: the same stage function, flags and JSON summary as the CLI.

Paths are read on the cluster: on a multi-node cluster give --out (and --input/--data)
on storage every node sees, not paths inside the uploaded working directory; inputs may also be
s3:// or gs:// URIs (copied onto every node), and --out too (built in $PUMA_OUT_STAGING, which
on a multi-node cluster must be on storage every node sees: README).
"""

import sys
from pathlib import Path

# --working-dir uploads the repository; make its package importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]], job=True))
