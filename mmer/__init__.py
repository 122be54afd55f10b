"""What every model shares: the registry, the training engine, the cell runner, run folders, metrics and the
one decision rule, prediction. Imports only ``nemu`` below it (ARCHITECTURE.md)."""
