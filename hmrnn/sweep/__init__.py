"""Run a W&B sweep file with no W&B server: the offline sweep runner.

    python -m hmrnn.sweep sweeps/ptb_ablation_small.yaml [--count N] [--dir DIR] [--seed S]
                                                         [--progress-every SECONDS]

The same file ``wandb sweep`` accepts: W&B's own sweep engine (the ``sweeps`` package) proposes
each run (grid, random or bayes, from the runs so far), each run is launched exactly as
``wandb agent`` would expand the file's ``command`` (wandb's own macro expansion, ``python``
being this interpreter), with ``WANDB_MODE=offline`` (``wandb sync`` uploads the runs later), and
Hyperband early termination is applied from the runs' CSV logs. One run at a time.

The sweep's state is ``DIR/sweep.json`` (default ``runs/sweeps/<file name>``), rewritten
atomically after every change, with one log per run in ``DIR/logs``. Started again after an
interruption it never repeats a finished run: an interrupted run continues from its last
checkpoint (``python -m hmrnn.train resume=<run folder>``) or, without one, starts over.
``--count N`` is the number of runs the sweep should hold when this command ends (finished,
failed or stopped ones included); a grid ends when every cell has run. Ctrl-C (or SIGTERM) stops
the current run, which saves a checkpoint, and leaves the sweep resumable.

What it prints: when a run starts, its number (i/N), its swept values, its run folder and its log
(the training's own output, ``DIR/logs/<run id>.log``); while it runs, a line at most every
``--progress-every`` seconds (30) with the step and epoch read from its CSV log, the latest and
best value of the sweep's metric, the time so far and an ETA (when ``trainer.max_steps``, or
``max_epochs`` once an epoch has ended, gives the steps to go); when it ends, how (finished,
stopped by Hyperband, failed with its exit code and the last lines of its log) with its test
metric from results.json; at the end, a table of all the sweep's runs.

In parts: ``engine`` (W&B's sweep engine and macro expansion), ``state`` (sweep.json),
``children`` (the runs' processes), ``hyperband`` (early termination), ``progress`` (a running
run's progress), ``outcome`` (how runs ended, the final table) and ``runner`` (the loop);
``python -m hmrnn.sweep`` is ``__main__``. None of them imports torch or Lightning; the wandb SDK
is imported only to expand a run's command (its macro functions live nowhere else).
"""
