"""Data sets in the layouts recommendation models read (see criteo)."""
