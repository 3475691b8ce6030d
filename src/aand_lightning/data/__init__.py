"""Data layer: dataset readers list samples; one datamodule turns them into batches."""
