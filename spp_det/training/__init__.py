"""The training loop and what feeds it: window sampling, mini-batches, loss, solver, hooks."""
