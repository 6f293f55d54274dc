"""A stand-in for the `wandb` package, for the trainer's tests: put `tests/fake_wandb` on the path.

Every call (the import itself, `init`, a run's `log` and `finish`) is appended as a JSON line to
the file `$FAKE_WANDB_CALLS` names, with the process's `RANK` and what `WANDB_MODE` read then.
`$FAKE_WANDB_INIT_FAILS` makes `init` raise with that text, as wandb does without a login.
"""

import json
import os


def _put(call: str, **fields) -> None:
    record = {
        "call": call,
        "rank": os.environ.get("RANK", "0"),
        "wandb_mode": os.environ.get("WANDB_MODE"),
        **fields,
    }
    with open(os.environ["FAKE_WANDB_CALLS"], "a") as f:
        f.write(json.dumps(record) + "\n")


_put("import")


class Run:
    def log(self, data, step=None, **kwargs):
        _put("log", data=data, step=step, kwargs=sorted(kwargs))

    def finish(self, **kwargs):
        _put("finish", kwargs=sorted(kwargs))


def init(project=None, name=None, config=None, **kwargs):
    _put("init", project=project, name=name, config=config, kwargs=sorted(kwargs))
    if os.environ.get("FAKE_WANDB_INIT_FAILS"):
        raise RuntimeError(os.environ["FAKE_WANDB_INIT_FAILS"])
    return Run()
