"""Writes for evaluation: sweeps (claim, run, resume) and proposals (review, apply)."""

from evaluation.services.proposals import (
    proposal_apply,
    proposal_approve,
    proposal_create,
    proposal_create_manual,
    proposal_reject,
    proposal_rollback,
    proposal_supersede,
)
from evaluation.services.sweeps import (
    sweep_claim,
    sweep_heartbeat,
    sweep_reap_stale,
    sweep_run_create,
    sweep_run_enqueue,
    sweep_run_execute,
    sweep_run_resume,
    sweep_samples_purge,
    sweep_schedule_fire,
    sweep_slot_key,
)

__all__ = [
    "proposal_apply",
    "proposal_approve",
    "proposal_create",
    "proposal_create_manual",
    "proposal_reject",
    "proposal_rollback",
    "proposal_supersede",
    "sweep_claim",
    "sweep_heartbeat",
    "sweep_reap_stale",
    "sweep_run_create",
    "sweep_run_enqueue",
    "sweep_run_execute",
    "sweep_run_resume",
    "sweep_samples_purge",
    "sweep_schedule_fire",
    "sweep_slot_key",
]
