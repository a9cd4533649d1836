"""Problem builders that ship with mtlbench (domain packages ship their own)."""
