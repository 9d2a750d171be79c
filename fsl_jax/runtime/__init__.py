"""What a run needs around the training path: devices and processes, files, signals.

* ``sharding``: the device mesh and how batches and state are laid out on it.
* ``distributed``: starting several processes (``jax.distributed``).
* ``checkpointing``: Orbax checkpoints, never half-written, with the best kept.
* ``divergence``: non-finite steps, detected on device and handled on the host.
* ``preemption``: SIGTERM becomes a checkpoint and a clean stop.
* ``workdir_lock``: one run per workdir.
* ``metrics_log``: metrics.jsonl, TensorBoard and the progress line.
* ``atomic_files``: files written whole or not at all.
* ``host_allocator``, ``cpu_matmuls``: the host allocator and XLA:CPU's matmul library.
"""
