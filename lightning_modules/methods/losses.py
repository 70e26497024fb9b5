"""Distillation losses. Each returns a scalar; masks select the rows (sentences or words) that count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datamodules.token import word_start_mask


def kd_per_row(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` of each row of ``[..., classes]`` logits. The
    ``T^2`` keeps gradient size independent of T (Hinton et al., 2015)."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature**2 * (teacher.exp() * (teacher - student)).sum(-1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``kd_per_row`` averaged over the rows where ``mask`` is true."""
    per_row = kd_per_row(student_logits, teacher_logits, temperature)
    if mask is not None:
        per_row = per_row[mask]
    if per_row.numel() == 0:
        return student_logits.sum() * 0.0
    return per_row.mean()


def hidden_state_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    projections: torch.nn.ModuleList,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over layer pairs of the MSE between projected student and teacher hidden states
    ``[batch, positions, width]`` at the positions where ``mask`` is true."""
    losses = []
    for s, t, project in zip(student, teacher, projections, strict=True):
        losses.append(F.mse_loss(project(s.float())[mask], t.float()[mask]))
    return torch.stack(losses).mean()


def attention_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over layer pairs of the MSE between attention maps ``[batch, heads, query, key]``,
    over real (non-padding) query and key positions (TinyBERT-style)."""
    keep = attention_mask.bool()
    pairs = keep[:, None, :, None] & keep[:, None, None, :]
    losses = []
    for s, t in zip(student, teacher, strict=True):
        pair_mask = pairs.expand_as(s)
        losses.append(F.mse_loss(s.float()[pair_mask], t.float()[pair_mask]))
    return torch.stack(losses).mean()


def per_word(values: torch.Tensor, word_ids: torch.Tensor, n_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather ``[batch, positions, ...]`` values at the first sub-token of each word into
    ``[batch, n_words, ...]``, with a ``[batch, n_words]`` mask of words present. Two tokenizers
    that split the same words differently line up on this word axis."""

    starts = word_start_mask(word_ids)
    batch, _ = word_ids.shape
    out = values.new_zeros((batch, n_words, *values.shape[2:]))
    present = torch.zeros(batch, n_words, dtype=torch.bool, device=values.device)
    rows, positions = starts.nonzero(as_tuple=True)
    words = word_ids[rows, positions]
    inside = words < n_words
    rows, positions, words = rows[inside], positions[inside], words[inside]
    out[rows, words] = values[rows, positions]
    present[rows, words] = True
    return out, present
