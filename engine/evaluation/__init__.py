"""After training: evaluate a run against the prompted base model (heavy, own process), its report and metric list, task metrics, forgetting probes, the optional judge, the blind A/B store."""
