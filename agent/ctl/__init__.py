"""``agentctl``: the operator's command line for a running agent."""
