"""``python tests/fault_child.py <main flags>``: fsl_jax.main with a test-only fault hook.

FSL_TEST_PAUSE_COMMIT=STEP makes the checkpoint save of step STEP stop just
before Orbax's atomic rename (its commit), print "PAUSED IN COMMIT STEP" to
stderr and sleep, so that a test can SIGKILL the process in the middle of a
save. Nothing else differs from ``python -m fsl_jax.main``.
"""

import os
import sys
import time

from absl import app
from orbax.checkpoint._src.path import atomicity

from fsl_jax import config_check, main

PAUSE_STEP = os.environ.get("FSL_TEST_PAUSE_COMMIT")

if PAUSE_STEP is not None:
  commit = atomicity.AtomicRenameTemporaryPath.finalize

  async def paused_commit(self, *args, **kwargs):
    if os.path.basename(os.fspath(self.get_final())) == PAUSE_STEP:
      print(f"PAUSED IN COMMIT {PAUSE_STEP}", file=sys.stderr, flush=True)
      time.sleep(600)
    return await commit(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = paused_commit

if __name__ == "__main__":
  app.run(main.main, flags_parser=config_check.parse_flags)
