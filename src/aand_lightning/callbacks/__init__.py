"""Lightning callbacks: teacher handoff between stages, heatmap pictures."""
