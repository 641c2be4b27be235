"""A training run's directory, one module per job:

    jem_tf.workdir.run_files    the file names, config / run-info / status I/O, leftovers of killed runs
    jem_tf.workdir.lock         the one-writer lock (WorkdirLock)
    jem_tf.workdir.checkpoints  checkpoint names, verification, the state file's repair, the trusted restore
    jem_tf.workdir.restore      a trained run's network and replay buffer for readers (export, evaluation)

    WORKDIR/
      config.json         the run's TrainConfig (with the effective recovery state)
      run_info.json       dataset facts: image shape, classes, split sizes
      run_status.json     running | preempted | finished | diverged | failed, at which step
      recoveries.json     one entry per automatic divergence recovery
      metrics.json        final test metrics
      .lock               held (fcntl.flock) by the one training process; names its PID and host
      checkpoints/        ckpt-N.index + ckpt-N.data-*, the `checkpoint` state file
      checkpoints/broken/ checkpoints that failed verification, moved aside (never deleted)
      tensorboard/ samples/ export/

This package's own namespace is empty: import the module that does the job.
"""
