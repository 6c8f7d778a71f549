"""Cosine distillation losses between the teacher and the student features."""

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hetnet_ros.model.config import LOSS_COSINES


def cosine_distance_map(teacher: Tensor, student: Tensor) -> Tensor:
    """Return M = 1 - cos(teacher, student) along channels: (N, C, H, W) twice -> (N, H, W).

    Values lie in [0, 2]; 0 where the student reproduces the teacher's direction.
    """
    _check_same_shape(teacher, student)
    return 1.0 - F.cosine_similarity(teacher, student, dim=1)


def flattened_cosine_distance(teacher: Tensor, student: Tensor) -> Tensor:
    """Return 1 - cos between each image's whole flattened maps: (N, C, H, W) twice -> (N,).

    One vector of C * H * W values per image, so positions with large feature norms
    weigh more than in the per-position distance.
    """
    _check_same_shape(teacher, student)
    return 1.0 - F.cosine_similarity(teacher.flatten(1), student.flatten(1), dim=1)


def multi_level_cosine_loss(
        teacher_levels: Sequence[Tensor], student_levels: Sequence[Tensor],
        cosine: str = 'per_position') -> Tensor:
    """Sum over levels of the mean cosine distance between teacher and student.

    With cosine='per_position' this is L_KD (clean student) or L_Recon (denoising student)
    of equation (3) in the HetNet paper: sum_k mean_{n, h, w} M_k(n, h, w), with M_k the
    cosine distance along channels at each position. With cosine='flattened' each level
    contributes mean_n (1 - cos(flatten(teacher_n), flatten(student_n))). The RD4AD
    reference training code (github.com/hq-deng/RD4AD, main.py) computes it this way.

    Args:
        teacher_levels: list of (N, C_k, H_k, W_k).
        student_levels: list of the same shapes.
        cosine: 'per_position' or 'flattened'.

    Returns:
        Scalar tensor.
    """
    if cosine not in LOSS_COSINES:
        raise ValueError(f'cosine must be one of {LOSS_COSINES}, got {cosine!r}')
    if len(teacher_levels) != len(student_levels):
        raise ValueError(
            f'got {len(teacher_levels)} teacher levels but {len(student_levels)} student levels')
    distance = cosine_distance_map if cosine == 'per_position' else flattened_cosine_distance
    per_level = [distance(t, s).mean() for t, s in zip(teacher_levels, student_levels)]
    return torch.stack(per_level).sum()


class HetNetLoss(nn.Module):
    """Collaborative distillation loss L_Total = L_KD + alpha * L_Recon.

    L_KD compares the teacher's local features with the student's reconstruction of the
    clean prototype o, and L_Recon with its denoising of the noisy prototype o'. Both
    students share their weights. Without a denoising pass, L_Recon is a zero tensor.

    Args:
        alpha: weight of L_Recon (0.1 in the HetNet paper).
        cosine: 'per_position' (equation (3) of the HetNet paper) or 'flattened', see
            `multi_level_cosine_loss`.
    """

    def __init__(self, alpha: float = 0.1, cosine: str = 'per_position'):
        super().__init__()
        if cosine not in LOSS_COSINES:
            raise ValueError(f'cosine must be one of {LOSS_COSINES}, got {cosine!r}')
        self.alpha = alpha
        self.cosine = cosine

    def forward(self, teacher_levels: List[Tensor], clean_student_levels: List[Tensor],
                noisy_student_levels: Optional[List[Tensor]] = None) -> Dict[str, Tensor]:
        """Return {'loss', 'loss_kd', 'loss_recon'}, each a scalar tensor.

        Args:
            teacher_levels: teacher local features, list of (N, C_k, H_k, W_k).
            clean_student_levels: student output for o, same shapes.
            noisy_student_levels: student output for o', same shapes, or None.
        """
        loss_kd = multi_level_cosine_loss(teacher_levels, clean_student_levels, self.cosine)
        if noisy_student_levels is None:
            loss_recon = torch.zeros((), dtype=loss_kd.dtype, device=loss_kd.device)
        else:
            loss_recon = multi_level_cosine_loss(teacher_levels, noisy_student_levels, self.cosine)
        return {'loss': loss_kd + self.alpha * loss_recon, 'loss_kd': loss_kd, 'loss_recon': loss_recon}


def _check_same_shape(teacher: Tensor, student: Tensor) -> None:
    if teacher.shape != student.shape:
        raise ValueError(
            f'teacher and student features must have the same shape, got {tuple(teacher.shape)} '
            f'and {tuple(student.shape)}')
