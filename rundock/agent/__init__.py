"""The compute host's side: runs one job through its lifecycle."""
