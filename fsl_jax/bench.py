"""``python -m fsl_jax.bench``: the benchmark command, defined in fsl_jax/tools/bench.py."""

from fsl_jax.tools import bench

if __name__ == "__main__":
  bench.run_main()
