"""One folder per stage of `prune`: nodes.py (thin functions over evoprune.core) + pipeline.py."""
