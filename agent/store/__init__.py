"""What the agent keeps on disk: crash-safe files and the records read at start-up."""
