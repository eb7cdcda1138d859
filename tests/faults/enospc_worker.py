"""engine.training.worker with a full disk while one checkpoint is written.

    ENOSPC_CHECKPOINT=checkpoint-30 ENOSPC_NTH=1 python tests/faults/enospc_worker.py --run-dir DIR

The Nth file write (torch.save or safetensors) into that checkpoint writes part of
its bytes and raises OSError(ENOSPC), as a write on a full disk does. Everything
else is the real worker; the injection sits at the file-write boundary because a
real full filesystem cannot be made without root.
"""

from __future__ import annotations

import errno
import os
import sys

import peft  # noqa: F401 - imported before patching so its bound save functions are found
import safetensors.torch
import torch
import transformers.modeling_utils  # noqa: F401
import transformers.trainer  # noqa: F401

import engine.training.recipes.sft  # noqa: F401
from engine.training.worker import main

TARGET = os.environ["ENOSPC_CHECKPOINT"]
NTH = int(os.environ.get("ENOSPC_NTH", "0"))
writes = 0


def failing(original):
    def save(obj, path, *args, **kwargs):
        global writes
        if f"{os.sep}{TARGET}{os.sep}" in str(path):
            if writes >= NTH:
                with open(path, "wb") as f:
                    f.write(b"\0" * 4096)  # the part that fitted
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            writes += 1
        return original(obj, path, *args, **kwargs)
    return save


originals = {id(torch.save): torch.save, id(safetensors.torch.save_file): safetensors.torch.save_file}
patched = {key: failing(fn) for key, fn in originals.items()}
for module in list(sys.modules.values()):
    for name, value in list(vars(module).items() if module else ()):
        if id(value) in originals and value is originals[id(value)]:
            setattr(module, name, patched[id(value)])

if __name__ == "__main__":
    sys.exit(main())
