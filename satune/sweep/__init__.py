"""A sweep's state without Ray: its run directory and storage (a folder or an object store), the plan
it prints, its trials' rows and configurations, the one ranking rule, and the verdicts between
configurations. The report, the Python API and the CLI read sweeps through here; `tune/` runs them."""
