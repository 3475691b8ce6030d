"""Lightning callbacks: the amplifier handoff between stages, last.ckpt, heatmaps and score plots."""
