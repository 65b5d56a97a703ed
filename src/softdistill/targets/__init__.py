"""Soft-label sources: modules that map a batch to teacher logits (B x K).

Every source is an ``nn.Module`` whose ``forward(batch)`` returns logits, so a method can take
any of them where it needs a teacher: a trained model, cached logits of one, or (in later
modules) a designed virtual teacher.
"""

from softdistill.targets.teacher import CachedTeacher, FrozenTeacher, load_teacher

__all__ = ["FrozenTeacher", "CachedTeacher", "load_teacher"]
