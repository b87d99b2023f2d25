"""Where datakiln runs: embedded local Ray, a Ray cluster, or Kubernetes."""
