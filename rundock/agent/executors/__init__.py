"""How a job's command is executed: one module per executor."""
