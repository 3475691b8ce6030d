"""What a run does around the LightningModules, for the entry points and the Python calls: `stage`
(a stage's Trainer, its test pass and metrics.json, failure records), `training` (the stages of a
training config), `evaluation` (a stage-2 checkpoint tested on a dataset)."""
