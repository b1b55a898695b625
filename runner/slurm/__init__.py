"""The Slurm executor: one batch job per attempt, multi-node torchrun, the runner on the login node.

settings (the study's `resources.slurm`), script (the generated sbatch script), commands (sbatch, squeue,
sacct, scontrol, scancel), executor (runner.executor.Executor over them), preflight (checks before anything
is submitted). docs/slurm.md is the user's guide.
"""
