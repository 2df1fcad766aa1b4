"""The scripts' jobs (train, eval, detect, propose) and what they share on the command line."""
