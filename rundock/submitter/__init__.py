"""The user's side: workspace, experiments, client runs, snapshots, targets and the CLI."""
