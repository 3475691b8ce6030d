"""What the speed benchmarks time: each system's stage-2 training step and inference call, and the
alternating timer that measures them (benchmarks/speed.py, benchmarks/epochs.py)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aand_lightning.config import config_dir, config_file
from aand_lightning.models.build import build_aand, build_teacher
from aand_lightning.models.losses import (
    AmplificationLoss,
    CosineDistillationLoss,
    HardKnowledgeDistillationLoss,
)
from aand_lightning.stages.feature_cache import TeacherFeatureCache

ROOT = Path(__file__).resolve().parents[1]
WRN50 = {**config_file("backbone/wide_resnet50_2.yaml"), "name": "wide_resnet50_2", "weights": "none"}
RAA = config_file("raa/default.yaml")
ANOMALY_MAP = config_file("train.yaml")["anomaly_map"]
# ours_rd_w64: our RD with anomalib's 64-wide bottleneck (RD's own is 128-wide), to compare equal FLOPs
SYSTEMS = ("ours_rd", "ours_rd_w64", "ours_aand", "anomalib_rd")
WRN50_W64 = {**WRN50, "student": {**WRN50["student"], "bottleneck_width_per_group": 64}}
# The authors' ViT variant (ours_aand_vit): CLIP ViT-B/16 teacher, ViT decoder student, random weights
CLIP_VIT = {
    **{k: v for k, v in config_file("backbone/clip_vit_b16.yaml").items() if k != "defaults"},
    "weights": "none", "student": config_file("student/vit_decoder.yaml"),
}  # fmt: skip
BACKBONES = {"ours_rd": WRN50, "ours_rd_w64": WRN50_W64, "ours_aand": WRN50, "ours_aand_vit": CLIP_VIT}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


@functools.cache
def _train_config() -> DictConfig:
    return OmegaConf.load(config_dir() / "train.yaml")


def configured_optimizer(stage: str, params) -> torch.optim.Optimizer:
    """The optimizer conf/train.yaml gives a stage (Adam, fused)."""
    return instantiate(_train_config()[stage].optimizer)(params)


class System:
    """A model with a training step and an inference call on normalised images."""

    def __init__(
        self,
        name: str,
        device: torch.device,
        size: int,
        channels_last: bool = False,
        bf16: bool = False,
        cache: TeacherFeatureCache | None = None,
    ) -> None:
        self.name = name
        self.cache = cache  # ours only: stage 2's feature cache, used when a step gives sample ids
        self.available = True
        self.channels_last, self.bf16 = channels_last, bf16
        self.device = device
        torch.manual_seed(0)
        if name.startswith("ours"):
            raa = {**RAA, "enabled": name.startswith("ours_aand")}
            self.model = build_aand(BACKBONES[name], raa, ANOMALY_MAP).to(device)
            self.loss = HardKnowledgeDistillationLoss() if raa["enabled"] else CosineDistillationLoss()
            params = self.model.student.parameters()
        else:
            try:
                from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
                from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
                from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel
            except ImportError:
                self.available = False
                return
            self.model = ReverseDistillationModel(
                backbone="wide_resnet50_2", input_size=(size, size), layers=["layer1", "layer2", "layer3"],
                anomaly_map_mode=AnomalyMapGenerationMode.ADD, pre_trained=False,
            ).to(device)  # fmt: skip
            self.loss = ReverseDistillationLoss()
            params = [p for n, p in self.model.named_parameters() if not n.startswith("encoder")]
        if name.startswith("ours"):
            self.optimizer = configured_optimizer("distill", params)
        else:  # anomalib's ReverseDistillation.configure_optimizers
            self.optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.99))
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def _autocast(self) -> torch.autocast:
        """bf16 autocast around forward and loss, as trainer.precision=bf16-mixed does."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self, images: torch.Tensor, ids: Sequence[int] | None = None) -> None:
        """One optimizer step; with a cache, `ids` (the items' sample ids; None: not reusable) select
        what it may serve."""
        self.model.train()
        with self._autocast():
            if self.name.startswith("ours"):
                images = self._inputs(images)
                cached = self.cache is not None
                features = self.cache(self.model.teacher, images, ids) if cached else None
                teacher, student = self.model.distill(images, features)
                loss = self.loss(teacher.amplified, student)
            else:
                encoder, decoder = self.model(self._inputs(images))
                loss = self.loss(encoder, decoder)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        with self._autocast():
            out = self.model(self._inputs(images))
        if self.name.startswith("ours"):
            return out.map, out.score
        return out.anomaly_map, out.pred_score


class Stage1Step:
    """Stage 1's training step with a fresh teacher: WRN50 with the gates forced by the synthetic mask,
    or (`vit`) the CLIP ViT on its predicted gates, as the authors' ViT variant trains."""

    def __init__(self, device: torch.device, vit: bool = False) -> None:
        torch.manual_seed(0)
        self.teacher = build_teacher(CLIP_VIT if vit else WRN50, RAA).to(device).eval()
        self.forcing = not vit
        self.loss = AmplificationLoss()
        self.optimizer = configured_optimizer("amplify", self.teacher.raa.parameters())

    def __call__(
        self, images: torch.Tensor, mask: torch.Tensor, foreground: torch.Tensor | None = None
    ) -> None:
        out = self.teacher(images, mask, forcing=self.forcing, mask_threshold=self.loss.mask_threshold)
        loss = self.loss(out, foreground)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def alternate(
    calls: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call; two warm-up rounds, then the calls alternate within every repeat."""
    for _ in range(2):  # the first timed round after a single warm-up still ran slow for every system
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(timed(call, device))
    return times


def measure(
    systems: dict[str, System], images: torch.Tensor, repeats: int, kind: str, device: torch.device
) -> dict[str, list[float]]:
    """Each system's training step or inference call on `images`, alternating."""
    call = {"train": lambda s: s.train_step(images), "infer": lambda s: s.infer(images)}[kind]
    return alternate({name: lambda s=system: call(s) for name, system in systems.items()}, repeats, device)
