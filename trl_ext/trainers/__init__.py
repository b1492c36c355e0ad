"""Thin subclasses of TRL trainers, one file per method. Each holds only what differs from TRL."""

from trl_ext.trainers.base import SharedTrainerMixin

__all__ = ["SharedTrainerMixin"]
