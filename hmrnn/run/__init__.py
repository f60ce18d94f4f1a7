"""One training run, in parts: ``folder`` (run folders, resume), ``build`` (module, trainer,
checks before work), ``summary`` (results.json) and ``job`` (the run from its command line)."""
