"""Jobs built on the models and data: training, inference, evaluation, checkpoints."""
