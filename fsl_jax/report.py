"""``python -m fsl_jax.report``: the results report, defined in fsl_jax/tools/report.py."""

from fsl_jax.tools import report

if __name__ == "__main__":
  report.run_main()
