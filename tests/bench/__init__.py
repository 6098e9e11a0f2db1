"""`make bench`: figures measured as ratios against baselines from the same run."""
