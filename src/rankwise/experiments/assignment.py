"""Sticky assignment of users, API keys or requests to the arms of an A/B experiment.

An arm is chosen by hashing, not by drawing and remembering: ``sha256(f"{experiment}:{unit value}")`` read
as a number in [0, 1) and placed on the arms' cumulative shares. The same user therefore lands in the same
arm after a restart, on every replica and without any shared state, so a person never flips between
rankings mid-experiment (which would blur the comparison) and nothing needs storing or synchronising.
Including the experiment's name in the hashed text decorrelates experiments: the users in one experiment's
treatment arm are not, systematically, the treatment users of the next one (Kohavi, Tang & Xu, "Trustworthy
Online Controlled Experiments", Cambridge University Press 2020, on randomisation by hashing).
SHA-256 is used for its uniformity, not its secrecy; 64 bits of it give buckets far finer than any share.
"""

from __future__ import annotations

import hashlib

from rankwise.experiments.config import Arm, Experiment, ExperimentError

_SCALE = float(2**64)


def bucket(experiment_name: str, unit_value: str) -> float:
    """Where ``unit_value`` falls in [0, 1) for this experiment: the first 8 bytes of the SHA-256 hash."""
    digest = hashlib.sha256(f"{experiment_name}:{unit_value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def enrolled(experiment: Experiment, unit_value: str) -> bool:
    """Whether ``unit_value`` is in the experiment's ``traffic`` share. Hashed apart from the arm choice
    (another salt), so enrolment does not pick arms: with ``traffic = 0.5`` and two equal arms, the enrolled
    units still split evenly."""
    return experiment.traffic >= 1.0 or bucket(f"{experiment.name}#traffic", unit_value) < experiment.traffic


def assign(experiment: Experiment, unit_value: str) -> Arm:
    """The arm ``unit_value`` (a user id, key id or request id, as ``experiment.unit`` says) belongs to.

    Deterministic: the same experiment name and value always give the same arm. An interleave experiment
    has no assignment (every request shows both arms), so asking for one is an error.
    """
    if experiment.mode != "ab":
        raise ExperimentError(f"experiment '{experiment.name}' interleaves every request; arms are assigned "
                              "only in ab mode")
    if not unit_value:
        raise ExperimentError(f"experiment '{experiment.name}' assigns by {experiment.unit}, but no "
                              f"{experiment.unit} id was given")
    point = bucket(experiment.name, unit_value)
    cumulative = 0.0
    for arm in experiment.arms:
        cumulative += arm.share
        if point < cumulative:
            return arm
    return experiment.arms[-1]  # shares add up to 1 within rounding: the last arm takes the remainder
