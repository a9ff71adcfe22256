"""Contrastive pretraining of the tiny CLIP (``vlprompt-tiny``) on captioned images of the toy world.

Images come from a fixed pool drawn once from the world (:func:`vlprompt.toy.world.iter_pretraining_pairs`);
captions are drawn anew every time an image is used, so the text side sees each concept alone and in
combination. Identical captions in a batch count as positives of each other (soft targets), since the
world repeats short captions often and calling them negatives would teach the model to tell apart what
the text cannot. (Counting every image a caption truly describes as a positive was tried and learned more
slowly: broad captions such as "a photo of a red shape." then carry little signal.)

Deterministic for a seed and thread count: ``tools/pretrain_toy_clip.py`` reproduces the shipped weights.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.clip import FrozenCLIP
from vlprompt.toy.medical import draw_medical_pool, medical_caption
from vlprompt.toy.world import IMAGE_SIZE, PRETRAIN_STYLES, caption, render, sample_concept

TOY_ARCH = "vlprompt-tiny"
#: The toy teacher: a wider tiny CLIP (CasPL's teacher in the toy world), pretrained the same way.
TOY_TEACHER_ARCH = "vlprompt-small"
#: The toy biomedical CLIP: a BERT-style text tower and a timm ViT, pretrained on the toy medical world.
TOY_BERT_ARCH = "vlprompt-bert-tiny"
#: The world each toy architecture is pretrained on (and its zero-shot accuracy measured on).
ARCH_WORLDS = {TOY_ARCH: "shapes", TOY_TEACHER_ARCH: "shapes", TOY_BERT_ARCH: "medical"}


@dataclass
class PretrainConfig:
    steps: int = 650
    batch_size: int = 256
    pool_size: int = 40_000
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0
    threads: int = 2
    arch: str = TOY_ARCH
    #: How often each style is drawn: "world" (the world's pretraining mix, photos 60%) or "even" (every style
    #: alike: more varied data, as a larger real CLIP sees; the toy teacher's).
    style_mix: str = "world"
    #: Share of training images degraded by random noise or blur, captions unchanged (robustness, as web-scale
    #: data gives a larger real CLIP); 0 for the world's own images only.
    degrade: float = 0.0


def _draw_pool(size: int, rng: random.Random, style_mix: str = "world", world: str = "shapes"):
    if world == "medical":
        images, described = draw_medical_pool(size, rng, IMAGE_SIZE)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), described
    if style_mix not in ("world", "even"):
        raise ValueError(f"style_mix must be 'world' or 'even', got {style_mix!r}")
    styles, weights = zip(*PRETRAIN_STYLES.items())
    if style_mix == "even":
        weights = [1] * len(styles)
    images = np.empty((size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    described = []
    for i in range(size):
        concept = sample_concept({}, rng)
        style = rng.choices(styles, weights)[0]
        images[i] = np.asarray(render(concept, style, rng))
        described.append((concept, style))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), described


def _degrade(images: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """``images`` (0..1) with a ``share`` of them noised (Gaussian, std 0.05-0.25) or blurred (Gaussian, sigma
    0.5-1.5), half each."""
    from torchvision.transforms.functional import gaussian_blur

    count = images.shape[0]
    chosen = torch.rand(count, generator=generator) < share
    noisy = chosen & (torch.rand(count, generator=generator) < 0.5)
    blurry = chosen & ~noisy
    out = images.clone()
    if noisy.any():
        std = 0.05 + 0.2 * torch.rand(int(noisy.sum()), 1, 1, 1, generator=generator)
        out[noisy] = (images[noisy] + std * torch.randn(images[noisy].shape, generator=generator)).clamp(0, 1)
    for i in torch.nonzero(blurry).flatten().tolist():
        sigma = 0.5 + float(torch.rand(1, generator=generator))
        out[i] = gaussian_blur(images[i], kernel_size=5, sigma=sigma)
    return out


def pretrain_toy_clip(config: PretrainConfig = PretrainConfig(),
                      report: Optional[Callable[[int, float, float], None]] = None) -> torch.nn.Module:
    """Train ``config.arch`` (``vlprompt-tiny``, the teacher ``vlprompt-small``, or the biomedical
    ``vlprompt-bert-tiny`` on the medical world) from scratch and return the open_clip model (fp32, eval mode).

    ``report(step, loss, seconds)`` is called every 50 steps and at the end.
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    # The wrapper's text path cuts sequences after the last EOT token (exact, and 2x cheaper for short captions).
    clip = FrozenCLIP(config.arch)
    model = clip.model
    model.requires_grad_(True).train()  # pretraining is the one place where the backbone learns
    preprocess = clip.preprocess_cfg
    mean = torch.tensor(preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"]).view(1, 3, 1, 1)

    world = ARCH_WORLDS.get(config.arch, "shapes")
    pool, described = _draw_pool(config.pool_size, rng, config.style_mix, world)
    caption_of = medical_caption if world == "medical" else caption
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(config.pool_size, generator=generator)
    cursor, started = 0, time.time()
    for step in range(config.steps):
        if cursor + config.batch_size > config.pool_size:
            order, cursor = torch.randperm(config.pool_size, generator=generator), 0
        index = order[cursor: cursor + config.batch_size]
        cursor += config.batch_size
        images = pool[index].float() / 255
        if config.degrade > 0:
            images = _degrade(images, config.degrade, generator)
        images = (images - mean) / std
        captions = [caption_of(*described[i], rng) for i in index.tolist()]
        image_features = model.encode_image(images, normalize=True)
        text_features = clip.encode_text(clip.tokenize(captions), normalize=True)
        logits = model.logit_scale.exp() * image_features @ text_features.t()
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
        targets = same / same.sum(dim=1, keepdim=True)  # symmetric, so it serves both directions
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if report and (step % 50 == 0 or step == config.steps - 1):
            report(step, float(loss), time.time() - started)
    model.requires_grad_(False)
    return model.eval()
