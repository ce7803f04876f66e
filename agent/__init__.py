"""The orchestrator: the command line now; the model loop arrives with issue 4."""
