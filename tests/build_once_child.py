"""One process of a two-process run that loads the small Omniglot into an empty data_dir.

python build_once_child.py PORT PROCESS_ID DATA_DIR MANUAL_DIR: joins the run on
127.0.0.1:PORT, loads split small1, and prints one JSON line describing what it read.
"""

import hashlib
import json
import sys

from fsl_jax.runtime import distributed

port, process_id, data_dir, manual_dir = sys.argv[1:]
distributed.initialize("on", f"127.0.0.1:{port}", 2, int(process_id))

from fsl_jax.data.class_images import load_omniglot  # noqa: E402

train = load_omniglot("small1", train_rotations=(0,), data_dir=data_dir, manual_dir=manual_dir)[
  "train"
]
digest = hashlib.sha256(train.images.tobytes()).hexdigest()
print(json.dumps({"classes": len(train.class_names), "sha256": digest}), flush=True)
