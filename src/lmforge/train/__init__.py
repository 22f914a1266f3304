"""Training: one loop (``loop.fit``) for pretraining and fine-tuning; parallelism, checkpoints,
schedules and distributed set-up beside it. ``pretrain.pretrain`` is the pretrain step."""
