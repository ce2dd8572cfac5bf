"""A versioned, append-only model registry in a plain directory.

Layout::

    <root>/versions/v1/            immutable Hugging Face model dir + model_card.json + rankwise-files.json
    <root>/versions/v2/ ...
    <root>/history.jsonl           append-only events: register, promote, rollback, alias, probe
    <root>/.lock                   serialises writers (flock)

Its parts, each with one reason to change: :mod:`~rankwise.registry.names` (which names exist),
:mod:`~rankwise.registry.files` (a version's verified, read-only files), :mod:`~rankwise.registry.history`
(the event log and its replay into aliases), :mod:`~rankwise.registry.card` (the typed model card) and
:mod:`~rankwise.registry.registry` (the :class:`Registry` that composes them: register, load, promote,
roll back, record probes).
"""

from rankwise.registry.card import (
    CARD,
    CardError,
    CardMetrics,
    ModelCard,
    TrainingData,
    Validation,
    read_card,
)
from rankwise.registry.files import DERIVED, MANIFEST
from rankwise.registry.names import ALIASES, VERSION_ID, check_name, names_registry
from rankwise.registry.registry import ModelVersion, Registry, default_registry_root

__all__ = [
    "ALIASES",
    "CARD",
    "DERIVED",
    "MANIFEST",
    "VERSION_ID",
    "CardError",
    "CardMetrics",
    "ModelCard",
    "ModelVersion",
    "Registry",
    "TrainingData",
    "Validation",
    "check_name",
    "default_registry_root",
    "names_registry",
    "read_card",
]
