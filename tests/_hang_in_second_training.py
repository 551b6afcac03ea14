"""Test helper, imported into a `bin/make_archset.py` subprocess: the second architecture's
training never ends. Before hanging it writes the file named by `AC_JAX_TEST_HANG_MARKER`, so the
test can SIGKILL a run that is certainly mid-training with exactly one record stored, without
racing the run's own speed."""

import os
import threading

from ac_jax.child.trainer import ChildTrainer

_real_train = ChildTrainer.train
_calls = []


def _train(self, arch, seeds):
    _calls.append(arch)
    if len(_calls) == 2:
        marker = os.environ["AC_JAX_TEST_HANG_MARKER"]
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)  # appears whole
        threading.Event().wait()  # until killed
    return _real_train(self, arch, seeds)


ChildTrainer.train = _train
