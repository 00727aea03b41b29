"""Evolutionary search over filter masks with pymoo: operators, problem, algorithms, callback."""
