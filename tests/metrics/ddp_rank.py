"""One gloo rank for tests/metrics/test_anomaly_metrics.py: `python ddp_rank.py RANK PORT FOLDER`.

Reads update()'s arguments from FOLDER/inputs.pt, updates with its uneven share (rank 0 the first 5
images, rank 1 the rest), and saves the computed metrics and the pixel coverage to FOLDER/<rank>.pt.
A process of its own (not a fork), so no thread pool of the test process is inherited.
"""

import os
import sys
from pathlib import Path

import torch

from aand_lightning.metrics import AnomalyMetrics


def main(rank: int, port: int, folder: Path) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    part = slice(0, 5) if rank == 0 else slice(5, None)
    metric = AnomalyMetrics()
    metric.update(*(tensor[part] for tensor in torch.load(folder / "inputs.pt")))
    result = {key: value.item() for key, value in metric.compute().items()}
    torch.save((result, metric.coverage().record()), folder / f"{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
