"""Where metrics go: metrics.jsonl, the console, results.json."""
