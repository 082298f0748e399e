"""`bert pretrain` as one process of a distributed test run, with a fault injected: the forward calls listed in
NAN_CALLS (1-based, counted in this process, e.g. "9,10") return a NaN loss. Otherwise exactly the CLI.

    RANK=1 WORLD_SIZE=2 … NAN_CALLS=9 python tests/pretrain_worker.py pretrain --data … --output …
"""

from __future__ import annotations

import os
import sys

calls = {int(x) for x in os.environ.get("NAN_CALLS", "").split(",") if x}
if calls:
    import bertcli.model as model

    real = model.pretraining_loss
    count = [0]

    def faulty(*args, **kwargs):
        count[0] += 1
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan"), stats) if count[0] in calls else (loss, stats)

    model.pretraining_loss = faulty  # what PretrainingModule calls

from bertcli.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv = ["bert", *sys.argv[1:]]
    main()
